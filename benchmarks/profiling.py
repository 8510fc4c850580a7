"""Where a compiled program's time goes (benchmark only): matmul FLOPs counted on the jaxpr, and a
profile of XLA's kernels grouped into matmuls, random bits, the optimizer update, gathers, other
elementwise work and loop control.

The profile runs the program under `jax.profiler`, reads each XLA kernel's ("thunk's") own time
from the trace with `jax.profiler.ProfileData`, and groups kernels by what the compiled HLO says
they compute: a dot or convolution is a matmul; an op traced inside `jax.random` is random bits;
an op written by Optax is the optimizer update; a gather is a gather. Times are CPU seconds over
all of XLA's threads, so shares are of the work done, whichever thread did it.
"""

import collections
import glob
import math
import re
import shutil
import tempfile
import time

import jax
from jax.extend import core as jex_core

PARTS = ("matmuls", "random bits", "optimizer update", "gathers", "other elementwise",
         "loop control and copies")
_RANDOM_OPS = re.compile(r"threefry|random_bits|jit\((_uniform|_bernoulli|_normal|_normal_real|_randint)\)"
                         r"|random_(fold_in|split|wrap|unwrap)")
_CONTROL = ("while", "conditional", "call", "copy", "tuple", "get-tuple-element", "parameter", "constant",
            "bitcast", "copy-start", "copy-done", "after-all", "partition-id", "replica-id")
_IDLE = ("wait for completion", "Await", "Threadpool")


# --- Matmul FLOPs ----------------------------------------------------------------------------------


def matmul_flops(fn, *args) -> int:
    """FLOPs (2 per multiply-add) of the dots and convolutions that fn(*args) traces to."""
    return _jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def _jaxpr_flops(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            (lhs_contract, rhs_contract), (_, rhs_batch) = eqn.params["dimension_numbers"]
            lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
            rhs_free = [d for i, d in enumerate(rhs) if i not in rhs_contract and i not in rhs_batch]
            total += 2 * math.prod(lhs) * math.prod(rhs_free)
        elif name == "conv_general_dilated":
            rhs = eqn.invars[1].aval.shape
            out_features = rhs[eqn.params["dimension_numbers"].rhs_spec[0]]
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(rhs) // out_features
        repeat = eqn.params.get("length", 1) if name == "scan" else 1
        for sub in jex_core.jaxprs_in_params(eqn.params):
            total += repeat * _jaxpr_flops(sub)
    return total


# --- Kernel profile --------------------------------------------------------------------------------


def _computations(hlo_text: str) -> dict[str, list[str]]:
    comps, current = {}, None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%(\S+) .*\{$", line)
        if header:
            current = comps.setdefault(header.group(1), [])
        elif line.startswith("}"):
            current = None
        elif current is not None and " = " in line:
            current.append(line.strip())
    return comps


def _frame_files(hlo_text: str) -> dict[str, str]:
    """stack_frame_id -> the source file of that frame, from the HLO module's stack-frame tables."""
    names = hlo_text.split("FunctionNames")[0].split("FileNames")[-1] if "FileNames" in hlo_text else ""
    files = dict(re.findall(r'^(\d+) "([^"]*)"$', names, re.M))
    locations = dict(re.findall(r"^(\d+) \{file_name_id=(\d+) ", hlo_text, re.M))
    frames = dict(re.findall(r"^(\d+) \{file_location_id=(\d+) ", hlo_text, re.M))
    return {frame: files.get(locations.get(location, ""), "") for frame, location in frames.items()}


def kernel_parts(hlo_text: str) -> dict[str, str]:
    """{kernel (instruction) name: part} for the compiled module `hlo_text` (`compiled.as_text()`)."""
    comps, frame_files = _computations(hlo_text), _frame_files(hlo_text)

    def inside(line: str, seen: set) -> list[str]:
        lines = [line]
        for callee in re.findall(r"(?:calls|to_apply)=%([\w.\-]+)", line):
            if callee not in seen:
                seen.add(callee)
                for inner in comps.get(callee, []):
                    lines += inside(inner, seen)
        return lines

    parts = {}
    for lines in comps.values():
        for line in lines:
            match = re.match(r"(?:ROOT )?%([\w.\-]+) = .*? ([a-z][\w\-]*)\(", line)
            if not match:
                continue
            name, opcode = match.groups()
            if opcode in _CONTROL:
                parts[name] = "loop control and copies"
                continue
            # Constants and broadcasts are shared across the module and carry another op's metadata.
            ops = [op for op in inside(line, set())
                   if not re.search(r" (constant|parameter|broadcast)\(", op)]
            text = "\n".join(ops)
            if re.search(r" (dot|convolution)\(", text):
                parts[name] = "matmuls"
            elif _RANDOM_OPS.search(text):
                parts[name] = "random bits"
            elif any("/optax/" in frame_files.get(f, "") for f in re.findall(r"stack_frame_id=(\d+)", text)):
                parts[name] = "optimizer update"
            elif re.search(r" gather\(", text):
                parts[name] = "gathers"
            else:
                parts[name] = "other elementwise"
    return parts


def _kernel_self_times(trace_dir: str) -> collections.Counter:
    """{event name: self time in seconds} over XLA's CPU threads (children's time taken out)."""
    path = sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1]
    totals = collections.Counter()
    for plane in jax.profiler.ProfileData.from_file(path).planes:
        for line in plane.lines:
            if not any(tag in line.name for tag in ("PjRtCpuClient", "XLAEigen", "Stream", "XLA Ops")):
                continue
            events = sorted(((e.start_ns, e.duration_ns, e.name) for e in line.events),
                            key=lambda e: (e[0], -e[1]))
            open_events, own = [], []  # stack of (end, index into own)
            for start, duration, name in events:
                while open_events and open_events[-1][0] <= start:
                    open_events.pop()
                if open_events:
                    own[open_events[-1][1]][1] -= duration
                open_events.append((start + duration, len(own)))
                own.append([name, duration])
            for name, ns in own:
                totals[name] += ns / 1e9
    return totals


def profile(run, hlo_text: str) -> dict[str, float]:
    """Runs `run()` under the profiler; CPU seconds per part of the program compiled to `hlo_text`,
    plus 'dispatch' (the runtime between kernels), 'idle' (threads waiting) and 'wall' (the run's
    wall-clock seconds)."""
    parts = kernel_parts(hlo_text)
    trace_dir = tempfile.mkdtemp()
    try:
        jax.profiler.start_trace(trace_dir)
        try:
            start = time.perf_counter()
            run()
            wall = time.perf_counter() - start
        finally:
            jax.profiler.stop_trace()
        times = _kernel_self_times(trace_dir)
    finally:
        shutil.rmtree(trace_dir, ignore_errors=True)
    result = dict.fromkeys((*PARTS, "dispatch", "idle"), 0.0) | {"wall": wall}
    for name, seconds in times.items():
        if name in parts:
            result[parts[name]] += seconds
        elif any(tag in name for tag in _IDLE) or name.startswith("end:"):
            result["idle"] += seconds
        elif name.startswith("ThunkExecutor") or name.startswith(("sort", "while", "call")):
            result["dispatch" if name.startswith("ThunkExecutor") else "loop control and copies"] += seconds
    return result
