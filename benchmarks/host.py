"""What machine a benchmark ran on, without starting JAX (the codec benchmarks do not)."""

import platform


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` says."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        return names[0] if names else cpu
    except OSError:
        return cpu
