"""nnkern.runtime: thread controls, one-thread small GEMMs, warmup (behaviour, no timings)."""

import os
import shutil
import subprocess
import sys

import numba
import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import nnkern
from nnkern import runtime


@pytest.fixture
def restore_threads():
    numba_before = numba.get_num_threads()
    with threadpool_limits(limits=None):  # restores every BLAS pool's count on exit
        yield
    numba.set_num_threads(numba_before)


def blas_counts():
    return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]


def test_exported_from_the_package():
    for name in ("warmup", "set_num_threads", "get_num_threads", "thread_info"):
        assert getattr(nnkern, name) is getattr(runtime, name)


def test_set_num_threads_sets_numba_and_every_blas_pool(restore_threads):
    nnkern.set_num_threads(1)
    assert nnkern.get_num_threads() == 1 == numba.get_num_threads()
    counts = blas_counts()
    assert counts and all(n == 1 for n in counts)  # NumPy's and SciPy's OpenBLAS
    libraries = " ".join(p["filepath"] for p in threadpool_info() if p["user_api"] == "blas")
    assert "numpy" in libraries and "scipy" in libraries
    top = runtime.max_threads()
    nnkern.set_num_threads(top)
    assert nnkern.get_num_threads() == top and all(n == top for n in blas_counts())
    info = nnkern.thread_info()
    assert info["numba"]["threads"] == top and info["numba"]["max_threads"] == top
    assert all(pool["threads"] == top for pool in info["blas"])
    assert info["parallel_min_work"] > 0 and info["blas_serial_max_work"] >= 0
    if sys.platform.startswith("linux") and info["numba"]["threading_layer"] == "omp":
        assert any("libgomp" in path for path in info["openmp_runtimes"])


def test_set_num_threads_rejects_bad_values(restore_threads):
    top = runtime.max_threads()
    with pytest.raises(ValueError, match=rf"between 1 and {top}, got {top + 1}; {top} is "
                                         "NUMBA_NUM_THREADS, which Numba reads when it is "
                                         "imported"):
        nnkern.set_num_threads(top + 1)
    with pytest.raises(ValueError, match="between 1 and"):
        nnkern.set_num_threads(0)
    for bad in (1.0, "2", True, None):
        with pytest.raises(TypeError, match="n must be an int"):
            nnkern.set_num_threads(bad)


def test_serial_blas_nests_and_the_outermost_block_restores_the_count(restore_threads):
    blas = runtime._numpy_blas()
    if not blas.ok:
        pytest.skip("NumPy's BLAS is not a pthreads OpenBLAS")
    blas.set(2)
    with runtime.serial_blas():
        assert blas.get() == 1
        with runtime.serial_blas():
            assert blas.get() == 1
        assert blas.get() == 1  # an inner block leaves the count to the outer one
    assert blas.get() == 2
    with pytest.raises(KeyError), runtime.serial_blas():
        raise KeyError
    assert blas.get() == 2 and runtime._serial_depth == 0
    # Sequential runs its layers inside one block; the kernels' own blocks nest in it
    model = nnkern.models.mlp(batch_norm=True, rng=0)
    x = np.random.default_rng(0).standard_normal((8, 1, 28, 28)).astype(np.float32)
    seen = []
    first = model.layers[1]
    real = first.forward

    def spy(*args, **kwargs):
        seen.append(blas.get())
        return real(*args, **kwargs)

    first.forward = spy  # the first call (validation) runs the layers one by one
    model.forward(x)
    model.backward(np.ones((8, 10), np.float32))
    assert seen == [1] and blas.get() == 2


def test_matmul_small_products_run_on_one_thread_and_restore_the_count(restore_threads,
                                                                        monkeypatch):
    blas = runtime._numpy_blas()
    if not blas.ok:
        pytest.skip("NumPy's BLAS is not a pthreads OpenBLAS")
    nnkern.set_num_threads(runtime.max_threads())
    before = blas.get()
    seen = []
    real_matmul = np.matmul

    def spy(a, b, out=None):
        seen.append(blas.get())
        return real_matmul(a, b, out=out)

    monkeypatch.setattr(runtime.np, "matmul", spy)
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((8, 5)).astype(np.float32), rng.standard_normal((5, 3)).astype(
        np.float32)
    out = np.empty((8, 3), np.float32)
    assert runtime.matmul(a, b, out) is out
    np.testing.assert_allclose(out, a @ b, rtol=1e-6)
    assert seen == [1] and blas.get() == before
    with threadpool_limits(1, user_api="blas"):  # a limit around the call is kept
        runtime.matmul(a, b, out)
        assert blas.get() == 1
    # large products: blocks of rows (16 each here) on the workers, still one BLAS thread each
    monkeypatch.setattr(runtime, "BLAS_SERIAL_MAX_WORK", 10)
    a = rng.standard_normal((40, 5)).astype(np.float32)
    seen.clear()
    out = runtime.matmul(a, b)
    np.testing.assert_allclose(out, a @ b, rtol=1e-6)
    assert seen == [1, 1, 1] and blas.get() == before


def test_matmul_blocks_do_not_depend_on_the_thread_count(restore_threads, monkeypatch):
    monkeypatch.setattr(runtime, "BLAS_SERIAL_MAX_WORK", 10)
    rng = np.random.default_rng(1)
    results = []
    for shape_a, shape_b in (((100, 64), (64, 50)), ((20, 64), (64, 70))):  # rows, columns
        a = rng.standard_normal(shape_a).astype(np.float32)
        b = rng.standard_normal(shape_b).astype(np.float32)
        for n in (1, runtime.max_threads()):
            nnkern.set_num_threads(n)
            results.append(runtime.matmul(a, b.T.copy().T))  # b as a transposed view, as dense
        np.testing.assert_array_equal(results[-2], results[-1])
        np.testing.assert_allclose(results[-1], a @ b, rtol=1e-5, atol=1e-5)


def test_warmup_reports_what_it_did():
    report = nnkern.warmup(["dense", "loss"], dtypes=("float32",))
    assert set(report["ops"]) == {"dense", "loss"}
    assert report["dtypes"] == ["float32"] and report["variants"] == ["serial", "parallel"]
    assert report["signatures"] > 0 and report["seconds"] >= 0
    assert report["compiled"] >= 0 and report["loaded"] >= 0
    assert "kernel signatures ready" in str(report)
    again = nnkern.warmup("dense", parallel=False)
    assert again["compiled"] == again["loaded"] == 0  # all in memory already
    assert again["variants"] == ["serial"]


def test_warmup_restores_the_parallel_threshold_and_rejects_bad_arguments():
    from nnkern import _jit
    before = _jit.PARALLEL_MIN_WORK
    nnkern.warmup("dropout", serial=False)
    assert _jit.PARALLEL_MIN_WORK == before
    with pytest.raises(ValueError, match=r"unknown ops \['densse'\]; choose from"):
        nnkern.warmup(["densse"])
    with pytest.raises(TypeError, match="dtypes must be float32 and/or float64, got int32"):
        nnkern.warmup("dense", dtypes=("int32",))
    with pytest.raises(ValueError, match="nothing to compile"):
        nnkern.warmup("dense", parallel=False, serial=False)
    assert set(runtime.warmup_ops()) >= {"dense", "conv2d", "pool2d", "batch_norm", "layers"}


@pytest.mark.parametrize("openmp_first", [False, True])
def test_numba_threads_start_with_brief_openmp_spinning_that_does_not_leak(openmp_first):
    # nnkern sets GOMP_SPINCOUNT only while Numba loads libgomp: PyTorch's own libgomp, loaded
    # later, must not see it. If the very libgomp Numba links is loaded already (here through
    # ctypes), Numba would share that runtime and its default spinning: workqueue then.
    # Also when set_num_threads (which starts Numba's threads) comes first. Fresh processes,
    # since this one's threads are already started.
    code = ("import os, numba, nnkern; nnkern.set_num_threads(1); "
            "import numpy as np; nnkern.functional.relu_forward(np.ones(1 << 20, np.float32)); "
            "from nnkern import _jit; "
            "print(numba.threading_layer(), os.environ.get('GOMP_SPINCOUNT'), "
            "_jit.PARALLEL_MIN_WORK)")
    if openmp_first:
        code = "import ctypes; ctypes.CDLL('libgomp.so.1', mode=ctypes.RTLD_GLOBAL); " + code
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_THREADING_LAYER", "GOMP_SPINCOUNT", "NNKERN_PARALLEL_MIN_WORK")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300, cwd=os.path.dirname(os.path.dirname(nnkern.__file__)))
    assert out.returncode == 0, out.stderr
    layer, spincount, min_work = out.stdout.split()
    assert spincount == "None"
    if sys.platform.startswith("linux"):
        assert layer == ("workqueue" if openmp_first else "omp")
        # workqueue starts a parallel region in ~0.1 ms: only large kernels go parallel
        assert int(min_work) == (1 << 20 if openmp_first else 32768)


@pytest.mark.skipif(not hasattr(os, "RTLD_DEEPBIND"), reason="needs dlopen's RTLD_DEEPBIND")
def test_numba_gets_an_openmp_runtime_of_its_own_beside_pytorchs_bundled_one(tmp_path):
    # PyTorch imported first puts its own copy of libgomp in the global scope; Numba's OpenMP
    # layer, loaded with RTLD_DEEPBIND, binds to the libgomp it was linked against instead (a
    # runtime that reads nnkern's GOMP_SPINCOUNT) and stays on OpenMP. A copy of the system
    # libgomp under another path stands in for torch's.
    from nnkern import _jit
    nnkern.functional.relu_forward(np.ones(1 << 20, np.float32))  # Numba's threads started
    system = [p for p in _jit.openmp_runtimes() if "libgomp" in os.path.basename(p)]
    if numba.threading_layer() != "omp" or len(system) != 1 or numba.get_num_threads() < 2:
        pytest.skip("Numba is not on the system's libgomp here")
    foreign = tmp_path / "libgomp.so.1"
    shutil.copy(system[0], foreign)
    # Separate runtimes, each with its own thread team: after Numba's 2-thread region, a
    # parallel region of the foreign runtime starts a worker of its own (one shared runtime
    # would reuse Numba's: 0 new threads, as with NUMBA_THREADING_LAYER=omp set by the user).
    code = (f"import ctypes, os; gomp = ctypes.CDLL({str(foreign)!r}, mode=ctypes.RTLD_GLOBAL); "
            "import numba, numpy as np, nnkern; from nnkern import _jit; "
            "y = nnkern.functional.relu_forward(np.arange(-5, 1 << 20, dtype=np.float32)); "
            "assert y[:6].tolist() == [0] * 6 and y[-1] == (1 << 20) - 1; "
            "before = len(os.listdir('/proc/self/task')); "
            "region = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda data: None); "
            "gomp.GOMP_parallel(region, None, ctypes.c_uint(2), ctypes.c_uint(0)); "
            "print(numba.threading_layer(), _jit.PARALLEL_MIN_WORK, "
            "len(_jit.openmp_runtimes()), len(os.listdir('/proc/self/task')) - before)")
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_THREADING_LAYER", "GOMP_SPINCOUNT", "NNKERN_PARALLEL_MIN_WORK")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=300, cwd=os.path.dirname(os.path.dirname(nnkern.__file__)))
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["omp", "32768", "2", "1"]
