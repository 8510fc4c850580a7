"""Benchmarks, profiling and the PyTorch reference: measurements of the library, kept outside
its import path (`vae` never imports them)."""
