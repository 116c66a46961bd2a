"""BLAS GEMM callable from inside jitted kernels: NumPy's own OpenBLAS, no SciPy needed.

``gemm(a, trans_a, b, trans_b, c, beta)`` computes c = op(a) @ op(b) + beta * c (op = transpose
when the flag is set) for 2-D float32 or float64 arrays whose rows are contiguous (unit column
stride; any row stride: a block of columns of a larger matrix is fine). It is for kernels that
run a GEMM and then the elementwise work on its result in the same call (a dense layer's bias
and ReLU), or that cut a GEMM into fixed blocks over ``prange``: one jitted call
instead of a Python-level ``np.matmul`` (~2 µs each) plus a kernel call per step, and blocks on
Numba's threads, which start in a few microseconds where a Python thread pool takes ~30.

How: the kernels call an external symbol ``nnkern_cblas_sgemm`` / ``nnkern_cblas_dgemm``, bound
at import (``llvmlite.binding.add_symbol``) to ``cblas_?gemm`` of the OpenBLAS that NumPy
loaded. Code that names a symbol, unlike code that embeds a ctypes pointer, can be cached on
disk (numba's own C helpers are bound the same way). Only NumPy's wheel BLAS, scipy-openblas64
(64-bit integers, symbols ``scipy_cblas_?gemm64_``), is bound: the integer width must be known
when the kernel is compiled. Elsewhere (an MKL or a 32-bit-integer NumPy build) ``AVAILABLE`` is
False and callers keep their ``np.matmul`` path.

OpenBLAS must run single-threaded while a kernel calls it (the calls may run on several Numba
threads at once): callers wrap kernel calls in ``serial_blas`` (``nnkern.runtime``, imported
here for them).
"""

import ctypes

import llvmlite.binding as llvm
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from nnkern._jit import cpu_inline
from nnkern.runtime import _numpy_blas, serial_blas  # noqa: F401 (kernels' callers use it)

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
_SYMBOLS = {"s": "nnkern_cblas_sgemm", "d": "nnkern_cblas_dgemm"}


def _bind():
    """Bind the nnkern_cblas_?gemm symbols to NumPy's OpenBLAS; True when done."""
    blas = _numpy_blas()
    if not blas.ok:
        return False
    try:
        lib = ctypes.CDLL(blas.path)
        found = {t: ctypes.cast(getattr(lib, f"scipy_cblas_{t}gemm64_"), ctypes.c_void_p).value
                 for t in _SYMBOLS}
    except (OSError, AttributeError):
        return False
    for t, address in found.items():
        llvm.add_symbol(_SYMBOLS[t], address)
    return True


#: True when kernels may call :func:`gemm` (NumPy's OpenBLAS is scipy-openblas64).
AVAILABLE = _bind()


@intrinsic
def _cblas_gemm(typingctx, trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc):
    # cblas_?gemm(RowMajor, ta, tb, m, n, k, 1, a, lda, b, ldb, beta, c, ldc) on the arrays'
    # data pointers (which include any view offset); 64-bit integers (ILP64 OpenBLAS)
    dtype = c.dtype
    if dtype not in (types.float32, types.float64) or a.dtype != dtype or b.dtype != dtype:
        return None
    sig = types.void(types.boolean, types.boolean, types.intp, types.intp, types.intp, a,
                     types.intp, b, types.intp, dtype, c, types.intp)

    def codegen(context, builder, signature, args):
        ta, tb, m_, n_, k_, a_, lda_, b_, ldb_, beta_, c_, ldc_ = args
        i32, i64 = ir.IntType(32), ir.IntType(64)
        real = context.get_value_type(dtype)
        ptr = real.as_pointer()
        fnty = ir.FunctionType(ir.VoidType(), [i32, i32, i32, i64, i64, i64, real, ptr, i64,
                                               ptr, i64, real, ptr, i64])
        name = _SYMBOLS["s" if dtype == types.float32 else "d"]
        fn = cgutils.get_or_insert_function(builder.module, fnty, name)

        def data(array_type, value):
            return cgutils.create_struct_proxy(array_type)(context, builder, value=value).data

        def trans(flag):
            return builder.select(flag, i32(_TRANS), i32(_NO_TRANS))

        builder.call(fn, [i32(_ROW_MAJOR), trans(ta), trans(tb), m_, n_, k_,
                          ir.Constant(real, 1.0), data(a, a_), lda_, data(b, b_), ldb_, beta_,
                          data(c, c_), ldc_])
        return context.get_dummy_value()

    return sig, codegen


@cpu_inline
def gemm(a, trans_a, b, trans_b, c, beta):
    # c (M, N) = op(a) (M, K) @ op(b) (K, N) + beta * c, op(a) = a.T when trans_a (likewise b);
    # every array 2-D with contiguous rows (column stride = itemsize)
    m, n = c.shape
    k = a.shape[0] if trans_a else a.shape[1]
    if m == 0 or n == 0:
        return
    if k == 0:  # BLAS would read nothing, but wants leading dimensions >= 1
        for i in range(m):
            for j in range(n):
                c[i, j] = c[i, j] * beta if beta != 0 else 0
        return
    size = c.itemsize
    _cblas_gemm(trans_a, trans_b, m, n, k, a, a.strides[0] // size, b, b.strides[0] // size,
                c.dtype.type(beta), c, c.strides[0] // size)
