"""Compile-only checks of the CUDA kernels for a real GPU (sm_90), without a GPU.

The simulator runs kernels as Python, so it checks no types: a kernel that would not compile,
or a float32 kernel that silently computes in float64 (Numba ignores NEP 50: a bare 0.5 is a
float64), passes there. tests/run.sh first runs the CUDA tests under the simulator with
NNKERN_RECORD_CUDA_SIGNATURES=<file>, which records every launch's argument types; this
module, in a process without the simulator, compiles each recorded signature to PTX with NVVM
(the numba-cuda[cu13] wheels, no driver needed) and checks that kernels whose floating-point
arrays are all float32 contain no float64 instruction.
"""

import importlib
import json
import os

import numpy as np
import pytest

PATH = os.environ.get("NNKERN_RECORD_CUDA_SIGNATURES")
CC = (9, 0)  # H100


def _recorded():
    if not PATH or not os.path.exists(PATH):
        return []
    with open(PATH) as f:
        return [tuple(json.loads(line)) for line in f if line.strip()]


SIGNATURES = _recorded()


def _numba_type(desc):
    from numba import types
    from numba.np.numpy_support import from_dtype
    if desc[0] == "scalar":
        return types.boolean if desc[1] == "|b1" else from_dtype(np.dtype(desc[1]))
    _, dtype, ndim, layout = desc
    return types.Array(from_dtype(np.dtype(dtype)), ndim, layout)


def _compile_ptx():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        pytest.skip("compile-only checks need the real numba.cuda, not the simulator")
    from numba import cuda
    try:
        cuda.compile_ptx(lambda a: None, "void(float32[::1])", cc=CC)
    except Exception as e:  # no NVVM: numba-cuda installed without its [cu12]/[cu13] extra
        pytest.skip(f"NVVM is not available to compile PTX: {e}")
    return cuda.compile_ptx


def test_signatures_were_recorded():
    if not PATH:
        pytest.skip("run through tests/run.sh, which records the simulator's kernel launches")
    assert SIGNATURES, f"no CUDA kernel launches were recorded in {PATH}"


@pytest.mark.parametrize("module, qualname, args", SIGNATURES,
                         ids=[f"{m.rsplit('.', 2)[-2]}.{q}:{a}" for m, q, a in SIGNATURES])
def test_kernel_compiles_for_sm90_without_float64(module, qualname, args):
    compile_ptx = _compile_ptx()
    kernel = getattr(importlib.import_module(module), qualname)
    descs = json.loads(args)
    sig = tuple(_numba_type(d) for d in descs)
    ptx, _ = compile_ptx(kernel.py_func, sig, cc=CC)
    float_arrays = {d[1] for d in descs if d[0] == "array" and d[1][1] == "f"}
    if float_arrays == {"<f4"}:
        float_scalars = [i for i, d in enumerate(descs) if d[0] == "scalar" and d[1] == "<f8"]
        assert not float_scalars, (f"{qualname}: float64 scalar arguments {float_scalars} to a "
                                   "float32 kernel (convert with x.dtype.type(v) on the host)")
        f64 = [line.strip() for line in ptx.splitlines() if ".f64" in line]
        assert not f64, f"{qualname}{sig}: float64 instructions in a float32 kernel:\n" + \
            "\n".join(f64[:10])
