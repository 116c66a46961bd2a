"""Run a benchmark: ceilings, kernels, training steps, JIT cost; returns the result dict."""

import datetime
import gc
import os
from dataclasses import dataclass, field

from nnkern.benchmark import cases as C
from nnkern.benchmark import ceilings, env, jitcost, steps
from nnkern.benchmark.report import SCHEMA
from nnkern.benchmark.stats import CpuClock, NumbaCudaClock, Timed, TorchCudaClock, interleave
from nnkern.benchmark.stats import rate as _rate
from nnkern.benchmark.torch_ref import load_torch


class BenchmarkRefused(RuntimeError):
    """The benchmark cannot give meaningful numbers here (simulator, no GPU, bad options)."""


@dataclass
class Options:
    quick: bool = False
    groups: tuple = C.GROUPS        # kernel groups to run
    steps: bool = True
    jit: bool = False
    device: str = "cpu"
    repeat: int = 7
    threads: int | None = None
    torch: bool = True
    target: float = 0.01            # seconds per sample (calibrated number of calls)
    warmup: int = 2
    command: str = ""
    args: dict = field(default_factory=dict)


def simulator_active():
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0").strip() not in ("", "0"):
        return True
    import sys
    if "numba" in sys.modules:
        from numba.core import config
        return bool(getattr(config, "ENABLE_CUDASIM", 0))
    return False


def check_device(device):
    """Refuse ``--device cuda`` under the simulator or without a GPU (BenchmarkRefused)."""
    if device != "cuda":
        return
    if simulator_active():
        raise BenchmarkRefused(
            "--device cuda refuses to run under the numba-cuda simulator "
            "(NUMBA_ENABLE_CUDASIM is set): simulated kernels run as Python threads on the CPU, "
            "so their timings mean nothing. Unset NUMBA_ENABLE_CUDASIM and run on a GPU.")
    from nnkern.backend import cuda_available
    if not cuda_available():
        reason = ""
        try:
            from numba import cuda
            cuda.current_context()
        except Exception as e:  # the driver's own words, when it has any
            reason = " (" + " ".join(f"{type(e).__name__}: {e}".split()) + ")"
        raise BenchmarkRefused(f"--device cuda: no CUDA GPU is available on this machine"
                               f"{reason}; nnkern.cuda_available() is False. Nothing was timed.")


def _pct(value, ceiling):
    return None if value is None or not ceiling else 100.0 * value / ceiling


def _metrics(case, counts, stats, peak, bw):
    gflops = _rate(counts["flops"], stats["median"])
    gbs = _rate(counts["bytes"], stats["median"])
    pct = _pct(gflops, peak) if case.kind == "compute" else _pct(gbs, bw)
    return {"time": stats, "gflops": gflops, "gbs": gbs, "pct_ceiling": pct}


def run_case(case, ctx, clocks, opts, peak, bw, log=print):
    """Rows (one per pass) of one case, nnkern and torch samples interleaved."""
    rows = []
    try:
        impls = case.build(ctx)
    except Exception as e:  # e.g. an op without a CUDA implementation
        impls = {}
        build_error = f"{type(e).__name__}: {e}"
        log(f"    skipped: {build_error}")
    else:
        build_error = None
    for name in case.passes:
        counts = case.counts[name]
        row = {"group": case.group, "name": case.name, "pass": name, "shape": case.shape,
               "kind": case.kind, "params": case.params, "flops": counts["flops"],
               "bytes": counts["bytes"],
               "intensity": counts["flops"] / counts["bytes"] if counts["bytes"] else None,
               "ceiling": "sgemm" if case.kind == "compute" else "copy",
               "results": {}, "skipped": {}}
        if build_error:
            row["skipped"]["nnkern"] = build_error
        timers = {}
        for label, factories in impls.items():
            try:
                timers[label] = Timed(clocks[label], factories[name](), warmup=opts.warmup,
                                      target=opts.target)
            except Exception as e:
                row["skipped"][label] = f"{type(e).__name__}: {e}"
                log(f"    {label} {name} skipped: {row['skipped'][label]}")
        interleave(list(timers.values()), opts.repeat)
        for label, timer in timers.items():
            row["results"][label] = _metrics(case, counts, timer.result(), peak, bw)
        nn = row["results"].get("nnkern")
        for label, key in (("torch", "ratio_vs_torch"), ("torch_cl", "ratio_vs_torch_cl")):
            if nn and label in row["results"]:
                row[key] = nn["time"]["median"] / row["results"][label]["time"]["median"]
        rows.append(row)
        if nn:
            t = row["results"].get("torch")
            log(f"    {name:8s} {nn['time']['median'] * 1e3:9.3f} ms"
                + (f"  torch {t['time']['median'] * 1e3:9.3f} ms  x{row['ratio_vs_torch']:.2f}"
                   if t else ""))
    del impls, timers
    gc.collect()
    return rows


def run_benchmark(opts, log=print):
    check_device(opts.device)
    load_before = env.loadavg()
    started = datetime.datetime.now().astimezone()
    import nnkern  # noqa: F401  (sets the thread-spinning defaults before NumPy's BLAS loads)
    # PyTorch loads before nnkern starts Numba's threads: each then runs on an OpenMP runtime
    # of its own with its own settings. Loaded after, torch would bind to the libgomp nnkern
    # loaded and run with its short spin-wait (nnkern/_jit.py): its MLP steps ~10-15 % slower.
    torch, torch_info = load_torch(opts.torch, opts.device)
    try:
        threads = env.ThreadSettings(opts.threads or env.max_threads())
    except ValueError as e:
        raise BenchmarkRefused(str(e)) from None
    if torch is not None:
        threads.apply_torch(torch)
        torch_info["threads"] = torch.get_num_threads()
    notes = []
    if not torch_info["available"]:
        notes.append(f"no PyTorch comparison: {torch_info['reason']}")
    if opts.quick:
        notes.append("--quick: tiny shapes and few samples, a smoke test; not for comparisons")

    cuda = opts.device == "cuda"
    if cuda:
        clocks = {"nnkern": NumbaCudaClock()}
        tclock = TorchCudaClock(torch) if torch is not None else None
    else:
        clocks = {"nnkern": CpuClock()}
        tclock = CpuClock()
    clocks["torch"] = clocks["torch_cl"] = tclock
    ctx = C.Context(opts.device, torch)

    log(f"nnkern bench: device {opts.device}, {threads.threads} threads, repeat {opts.repeat}"
        f"{', quick' if opts.quick else ''}; torch: "
        f"{torch_info['version'] if torch is not None else 'off (' + torch_info['reason'] + ')'}")
    log("ceilings ...")
    gemm_size, copy_mib = (512, 32) if opts.quick else (2048, 256)
    if cuda:
        ceil = {"sgemm": ceilings.cuda_sgemm_ceiling(torch, tclock, 8192 if not opts.quick
                                                     else 1024, opts.repeat),
                "copy": ceilings.cuda_copy_ceiling(clocks["nnkern"], copy_mib * 4, opts.repeat)}
    else:
        ceil = {"sgemm": ceilings.sgemm_ceiling(clocks["nnkern"], gemm_size, opts.repeat),
                "copy": ceilings.copy_ceiling(clocks["nnkern"], copy_mib, opts.repeat,
                                              threads.threads)}
    peak, bw = ceil["sgemm"].get("gflops"), ceil["copy"].get("gbs")
    log(f"  sgemm {peak or 0:.1f} GFLOP/s, copy {bw or 0:.1f} GB/s")

    kernel_rows = []
    all_cases = C.quick_cases() if opts.quick else C.standard_cases()
    selected = C.select(all_cases, opts.groups)
    for i, case in enumerate(selected, 1):
        log(f"[{i}/{len(selected)}] {case.group}: {case.name} ({case.shape})")
        kernel_rows += run_case(case, ctx, clocks, opts, peak, bw, log)

    step_rows = []
    if opts.steps:
        names = steps.QUICK if opts.quick else steps.STANDARD
        step_clocks = {"nnkern": clocks["nnkern"], "torch": tclock}
        for name in names:
            log(f"step: {name} ...")
            try:
                row = steps.run_step(name, batch=64, ctx=ctx, clocks=step_clocks,
                                     repeat=max(3, opts.repeat - 2), target=opts.target * 5,
                                     warmup=1, log=log)
            except Exception as e:
                log(f"    skipped: {type(e).__name__}: {e}")
                step_rows.append({"model": name, "batch": 64, "params": 0, "results": {},
                                  "skipped": {"nnkern": f"{type(e).__name__}: {e}"},
                                  "loss_check": None})
                continue
            step_rows.append(row)
            nn, t = row["results"]["nnkern"], row["results"].get("torch")
            log(f"    {nn['time']['median'] * 1e3:.2f} ms"
                + (f"  torch {t['time']['median'] * 1e3:.2f} ms  x{row['ratio_vs_torch']:.2f}"
                   if t else ""))
            gc.collect()

    jit = None
    if opts.jit:
        if cuda:
            jit = {"skipped": "JIT cost is measured for the CPU kernels only"}
        else:
            log("JIT cost (fresh processes) ...")
            jit = jitcost.measure(threads.threads, warm_runs=2 if opts.quick else 3, log=log)

    load_after = env.loadavg()
    cores = env.available_cores() or 1
    if load_before and load_before[0] > 0.5 * cores:
        notes.append(f"the machine was busy when the run started (1-min load {load_before[0]} "
                     f"on {cores} cores): expect slow and noisy numbers")
    if torch is not None and any(c.group == "optim" for c in selected):
        notes.append("optimizer rows: torch.optim with its default implementation for these "
                     "tensors (on CPU the per-tensor for-loop; foreach/fused are CUDA defaults)")
    result = {
        "schema": SCHEMA,
        "created": started.isoformat(timespec="seconds"),
        "command": opts.command,
        "args": opts.args,
        "environment": env.environment(threads, opts.device, torch_info, opts.command),
        "load": {"before": load_before, "after": load_after},
        "torch": torch_info,
        "clock": {"nnkern": clocks["nnkern"].name, "torch": tclock.name if tclock else None},
        "ceilings": ceil,
        "kernels": kernel_rows,
        "steps": step_rows,
        "jit": jit,
        "notes": notes,
    }
    return result
