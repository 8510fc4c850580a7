"""Compiled CPU kernels that stand in for XLA where it is slow, each behind one JAX operation with
an XLA fallback the caller gives, so the numbers never depend on whether a kernel is built.

    mixture.py   the logistic mixture's log p(x|z) of many decoder outputs (the 8-bit IWAE
                 evaluation's hot loop), its kernel in mixture.cc
    build.py     compiling a kernel's source for this CPU on first use, the private cache of
                 built libraries, loading one

A kernel is built only when a program that uses it is lowered for the CPU. The model reaches this
package only through `mixture.log_prob`; it imports nothing of the package.
"""
