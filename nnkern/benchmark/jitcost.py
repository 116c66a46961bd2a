"""JIT cost, apart from steady state: each measurement is a fresh Python process.

* cold: an empty ``NUMBA_CACHE_DIR`` (a new temporary directory): ``import nnkern``, then the
  first training step of seed 002's MLP (every kernel it needs compiles), then a second step.
* warm: the same cache directory, now filled: the first step only loads machine code.
* warmup (when ``nnkern.warmup`` exists): ``nnkern.warmup()`` with an empty cache and again with
  the cache it filled, then the first MLP step after it.

The parent also records each process's total wall time (interpreter start-up included).
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
import nnkern
out = {"import_s": time.perf_counter() - t0}
mode, threads = sys.argv[1], int(sys.argv[2])
t0 = time.perf_counter()
import numba
setter = getattr(nnkern, "set_num_threads", None)
if setter is not None:
    setter(threads)
else:
    numba.set_num_threads(threads)
out["numba_import_s"] = time.perf_counter() - t0
out["has_warmup"] = hasattr(nnkern, "warmup")
if mode == "warmup" and out["has_warmup"]:
    t0 = time.perf_counter()
    nnkern.warmup()
    out["warmup_s"] = time.perf_counter() - t0
import numpy as np
rng = np.random.default_rng(0)
x = rng.standard_normal((64, 1, 28, 28), dtype=np.float32)
y = rng.integers(0, 10, 64)
model = nnkern.models.mlp(rng=0)
loss = nnkern.losses.SoftmaxCrossEntropy()
opt = nnkern.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
def step():
    loss.forward(model.forward(x, training=True), y)
    model.backward(loss.backward(), need_input_grad=False)
    opt.step()
for key in ("first_step_s", "second_step_s"):
    t0 = time.perf_counter()
    step()
    out[key] = time.perf_counter() - t0
print("NNKERN_JIT " + json.dumps(out))
"""


def _run(mode, threads, cache_dir, timeout):
    env = dict(os.environ)
    env["NUMBA_CACHE_DIR"] = str(cache_dir)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, mode, str(threads)], env=env,
                          capture_output=True, text=True, timeout=timeout)
    wall = time.perf_counter() - start
    for line in proc.stdout.splitlines():
        if line.startswith("NNKERN_JIT "):
            out = json.loads(line[len("NNKERN_JIT "):])
            out["process_s"] = wall
            return out
    raise RuntimeError(f"JIT measurement process failed (exit {proc.returncode}): "
                       f"{proc.stderr.strip()[-2000:]}")


def _median_runs(mode, threads, cache_dir, runs, timeout):
    results = [_run(mode, threads, cache_dir, timeout) for _ in range(runs)]
    keys = [k for k in results[0] if isinstance(results[0][k], float)]
    out = {k: float(np.median([r[k] for r in results])) for k in keys}
    out["runs"] = runs
    out["has_warmup"] = results[0].get("has_warmup")
    return out


def measure(threads, warm_runs=3, timeout=1800, log=print):
    result = {"what": "fresh processes: import nnkern, then seed 002's MLP training step "
                      "(batch 64, SGD momentum); cold = empty NUMBA_CACHE_DIR, warm = filled",
              "threads": threads}
    with tempfile.TemporaryDirectory(prefix="nnkern-bench-cache-") as cache:
        log("  cold cache: import + first MLP step ...")
        result["cold"] = _run("step", threads, cache, timeout)
        log(f"  warm cache ({warm_runs} processes) ...")
        result["warm"] = _median_runs("step", threads, cache, warm_runs, timeout)
    if not result["cold"].get("has_warmup"):
        result["warmup"] = {"skipped": "nnkern.warmup() does not exist in this version"}
        return result
    with tempfile.TemporaryDirectory(prefix="nnkern-bench-cache-") as cache:
        log("  nnkern.warmup() with a cold cache ...")
        cold = _run("warmup", threads, cache, timeout)
        log("  nnkern.warmup() with a warm cache ...")
        warm = _median_runs("warmup", threads, cache, warm_runs, timeout)
    result["warmup"] = {"cold": cold, "warm": warm}
    return result
