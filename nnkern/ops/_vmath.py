"""Vectorisable ``exp``, ``expm1`` and ``tanh`` for the float32 activation kernels.

Why: this Numba build has no SVML, so ``math.exp`` inside a loop is a scalar libm call (~2 ns
per element): a sigmoid over 4M float32 took 15 ms against 1.7 ms for the branch-free
polynomial below, which LLVM's loop vectoriser turns into AVX2 code (8 lanes). float64 keeps
libm (``math.exp``/``expm1``/``tanh``, correctly rounded or nearly): it is the gradient-check
dtype, where accuracy matters more than speed.

Use ``vexp(v)``, ``vexpm1(v)``, ``vtanh(v)`` inside kernels: they pick the float32 polynomial
or libm by the argument's type at compile time.

float32 algorithm (Cephes ``expf``): exp(x) = 2^k exp(r), k = round(x / ln 2), r = x - k ln 2
with |r| <= ln2/2, exp(r) = 1 + r + r² P(r) (degree-5 minimax P). Measured inside kernels
(nnkern's fastmath flags) over 4e6 points of [-87, 88.7]: max error 1.2 ulp, 3.8 ulp in the
last 0.35 before overflow, where k is capped at 127 (NumPy's float32 exp: 2.5 ulp); expm1 and
tanh: max 1.6 ulp. The sign of a zero result is not kept (``nsz``). r must be computed as
(x - k·LN2_HI) - k·LN2_LO (Cody-Waite: k·LN2_HI is exact) *without* reassociation, which
nnkern's fastmath flags allow (``reassoc`` folds it into x - k·(LN2_HI + LN2_LO) and the error
grows to 9 ulp). Numba's fastmath pass only flags float instructions that have no flags yet, so
``_ln2_reduce`` emits its instructions itself with the harmless ``nsz`` flag (``strict_sub``
does the same for callers). Selects go through ``_select`` so that the helpers contain no
branches once inlined (see there).
"""

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload

from nnkern._jit import cpu_inline

_LN2_HI = 0.693359375          # 9 significant bits: k * _LN2_HI is exact for |k| < 2^15
_LN2_LO = -2.12194440e-4       # ln 2 - _LN2_HI
_LOG2E = 1.44269504088896341
_EXP_LO = -104.0               # exp(x) < 2^-150 below: rounds to 0 in float32
_EXP_HI = 88.8                 # exp(x) > FLT_MAX above 88.7228: inf


@intrinsic
def _f32_from_bits(typingctx, i):
    """Reinterpret an int32 as a float32 (here: 2^e from the biased exponent e + 127 << 23)."""
    sig = types.float32(types.int32)

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())

    return sig, codegen


@intrinsic
def _ln2_reduce(typingctx, x, k):
    """r = (x - k*LN2_HI) - k*LN2_LO in float32, exempt from reassociation and contraction."""
    sig = types.float32(types.float32, types.float32)

    def codegen(context, builder, signature, args):
        x_, k_ = args
        f32 = ir.FloatType()
        flags = ("nsz",)  # any flag keeps numba's fastmath pass from adding reassoc/contract
        hi = builder.fmul(k_, ir.Constant(f32, _LN2_HI), flags=flags)
        r = builder.fsub(x_, hi, flags=flags)
        lo = builder.fmul(k_, ir.Constant(f32, _LN2_LO), flags=flags)
        return builder.fsub(r, lo, flags=flags)

    return sig, codegen


@intrinsic
def _select(typingctx, cond, a, b):
    """``a if cond else b`` as one LLVM select: no branch in Numba's IR.

    Written-out conditionals (``if`` re-assignments, even ``a if c else b``) become branches
    and phi nodes, which Numba's SSA check flags (NumbaIRAssumptionWarning) once these helpers
    are inlined into prange loops; a select also vectorises directly.
    """
    if not (isinstance(cond, types.Boolean) and isinstance(a, types.Float) and a == b):
        return None
    sig = a(cond, a, b)

    def codegen(context, builder, signature, args):
        return builder.select(args[0], args[1], args[2])

    return sig, codegen


@intrinsic
def strict_sub(typingctx, a, b):
    """a - b for floats of one type, never reassociated with the surrounding expression.

    With ``reassoc`` LLVM may rewrite (x - m) - s as x - (m + s), and rounding m + s loses
    what x - m had kept exact (log-softmax at |x| ~ 1e4 lost 3e-4 absolute in float32).
    """
    if not (isinstance(a, types.Float) and a == b):
        return None
    sig = a(a, b)

    def codegen(context, builder, signature, args):
        return builder.fsub(args[0], args[1], flags=("nsz",))

    return sig, codegen


@cpu_inline
def _pow2f(k):
    # 2^k for an int32 k in [-126, 127]: exponent field k + 127, mantissa 0
    return _f32_from_bits((k + np.int32(127)) << np.int32(23))


@cpu_inline
def _expf(x):
    # float32 exp, branch-free (selects only) so that loops over it vectorise
    xc = min(max(x, np.float32(_EXP_LO)), np.float32(_EXP_HI))
    k = min(np.floor(xc * np.float32(_LOG2E) + np.float32(0.5)), np.float32(127.0))
    r = _ln2_reduce(xc, k)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    e = p * r * r + r + np.float32(1.0)
    # 2^k as 2^k1 * 2^k2 so that k in [-150, 127] never leaves the normal exponent range
    ki = np.int32(k)
    k1 = ki >> np.int32(1)
    y = e * _pow2f(k1) * _pow2f(ki - k1)
    y = _select(x < np.float32(_EXP_LO), np.float32(0.0), y)
    return _select(x != x, x, y)  # NaN in, NaN out


@cpu_inline
def _expm1f(x):
    # float32 expm1 = 2^k expm1(r) + (2^k - 1): exact cancellation-free form; for k = 0
    # (|x| < ln2/2) it is the Taylor polynomial itself, so tiny |x| keep full relative accuracy.
    xc = min(max(x, np.float32(-30.0)), np.float32(_EXP_HI))
    k = min(np.floor(xc * np.float32(_LOG2E) + np.float32(0.5)), np.float32(127.0))
    r = _ln2_reduce(xc, k)
    # expm1(r), |r| <= 0.347: Taylor to r^7 (truncation 0.347^8/8! = 6e-9 relative)
    q = np.float32(1.0 / 5040.0)
    q = q * r + np.float32(1.0 / 720.0)
    q = q * r + np.float32(1.0 / 120.0)
    q = q * r + np.float32(1.0 / 24.0)
    q = q * r + np.float32(1.0 / 6.0)
    q = q * r + np.float32(0.5)
    em = q * r * r + r
    s = _pow2f(np.int32(k))  # k in [-44, 127]
    y = strict_sub(s * em, np.float32(1.0) - s)  # strict: s*(em + 1) - 1 would cancel
    y = _select(x < np.float32(-30.0), np.float32(-1.0), y)  # -1 in float32 below about -17
    return _select(x != x, x, y)


@cpu_inline
def _tanhf(x):
    # float32 tanh (Cephes tanhf): odd polynomial for |x| < 0.625, else
    # sign(x) (1 - 2 / (exp(2|x|) + 1)), which saturates to ±1 without overflow trouble
    # (exp -> inf gives 2/inf = 0).
    z = x * x
    p = np.float32(-5.70498872745e-3)
    p = p * z + np.float32(2.06390887954e-2)
    p = p * z - np.float32(5.37397155531e-2)
    p = p * z + np.float32(1.33314422036e-1)
    p = p * z - np.float32(3.33332819422e-1)
    small = x + x * z * p
    a = abs(x)
    big = np.float32(1.0) - np.float32(2.0) / (_expf(a + a) + np.float32(1.0))
    big = _select(x > np.float32(0.0), big, -big)
    return _select(a < np.float32(0.625), small, big)


def vexp(v):
    """exp(v): float32 polynomial (<= 1 ulp) or libm for float64; jitted code only."""
    raise NotImplementedError("vexp is only callable from jitted code")


def vexpm1(v):
    """expm1(v), as ``vexp``."""
    raise NotImplementedError("vexpm1 is only callable from jitted code")


def vtanh(v):
    """tanh(v), as ``vexp``."""
    raise NotImplementedError("vtanh is only callable from jitted code")


@overload(vexp, inline="always")
def _vexp_impl(v):
    if v == types.float32:
        return lambda v: _expf(v)
    return lambda v: math.exp(v)


@overload(vexpm1, inline="always")
def _vexpm1_impl(v):
    if v == types.float32:
        return lambda v: _expm1f(v)
    return lambda v: math.expm1(v)


@overload(vtanh, inline="always")
def _vtanh_impl(v):
    if v == types.float32:
        return lambda v: _tanhf(v)
    return lambda v: math.tanh(v)


@intrinsic
def _maxnum(typingctx, a, b):
    """LLVM's ``maxnum(a, b)``: the larger, or the other operand when one is NaN.

    A loop of ``m = maxnum(m, x[j])`` is a reduction LLVM vectorises without ``nnan``; the
    written-out ``m = v if v > m else m`` is not (it stays a chain of dependent compares and
    selects, one element per ~4 cycles).
    """
    if not (isinstance(a, types.Float) and a == b):
        return None
    sig = a(a, b)

    def codegen(context, builder, signature, args):
        ty = args[0].type
        fn = builder.module.declare_intrinsic("llvm.maxnum", [ty], ir.FunctionType(ty, [ty, ty]))
        return builder.call(fn, args)

    return sig, codegen


@cpu_inline
def row_max(row):
    # row: (C,) contiguous, C >= 1 -> max_c row[c], vectorised (a 1000-wide row: 7x faster than
    # a compare-and-select chain). NaNs are skipped (NaN only if every value is): callers go
    # on to exp(x - max), where a NaN element still turns its whole row to NaN.
    m = row[0]
    for c in range(1, row.shape[0]):
        m = _maxnum(m, row[c])
    return m
