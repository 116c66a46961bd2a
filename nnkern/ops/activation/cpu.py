"""Numba CPU kernels for the activations.

Element-wise ops run one flat ``prange`` over ``x.reshape(-1)`` (a view: inputs are
C-contiguous): one pass, each element read and written once, branch-free bodies (selects) so
that LLVM vectorises them. Transcendentals go through ``_vmath`` (vectorised float32
polynomials, libm for float64). Every comparison and select is written so NaN propagates the
way PyTorch's kernels do (``0 if x < 0 else x`` keeps NaN, ``x > 0 ? ...`` sends NaN down the
negative branch).

Softmax and log-softmax work on an (N, C, L) view (L = H*W, or 1 for 2-D input) and reduce
over C. For L > 1 a task is one sample n and a block of up to ``_LBLOCK`` positions: the
channel loop is outer and the position loop inner and contiguous, so the max, the sum of
exponentials and the scaling all vectorise across positions, and a task's (C, block) slab
stays in L2 between the passes. For L == 1 a task is one row of C contiguous values.
"""

import math

import numpy as np
from numba import prange

from nnkern._jit import cpu_kernel
from nnkern.ops._vmath import row_max, strict_sub, vexp, vexpm1, vtanh
from nnkern.ops.activation import SELU_ALPHA, SELU_SCALE
from nnkern.ops.shift_scale.cpu import SUM_X_DY_NONPOS, param_grad_sums

_LBLOCK = 512  # positions per softmax task: 512 * C values per pass, e.g. 128 KiB for C = 64
_CBLOCK = 8    # channels per float32 partial sum in the softmax kernels


def _out(x, out):
    return np.empty_like(x) if out is None else out


def _unary(kernel, x, out, *args):
    # y = f(x, *args) over flat views; kernel signature (x, *args, y)
    y = _out(x, out)
    kernel.for_size(x.size)(x.reshape(-1), *args, y.reshape(-1))
    return y


def _unary_backward(kernel, dy, a, out, *args):
    # dx = f'(a, *args) * dy, a = x or y (whichever the rule reads); kernel (dy, a, *args, dx)
    dx = _out(dy, out)
    kernel.for_size(dy.size)(dy.reshape(-1), a.reshape(-1), *args, dx.reshape(-1))
    return dx


# ---------------------------------------------------------------- ReLU, leaky ReLU, PReLU


@cpu_kernel
def _relu_fwd_kernel(x, y):
    # x: (M,) -> y: (M,); y = max(x, 0) with NaN kept (as torch.clamp_min)
    zero = x.dtype.type(0)
    for i in prange(x.shape[0]):
        v = x[i]
        y[i] = zero if v < zero else v


@cpu_kernel
def _relu_bwd_kernel(dy, x, dx):
    # dy, x: (M,) -> dx: (M,); dx = dy where x > 0 else 0 (derivative 0 at 0, as torch)
    zero = x.dtype.type(0)
    for i in prange(x.shape[0]):
        dx[i] = zero if x[i] <= zero else dy[i]


@cpu_kernel
def _leaky_fwd_kernel(x, slope, y):
    # x: (M,) -> y: (M,); y = x if x > 0 else slope * x
    zero = x.dtype.type(0)
    for i in prange(x.shape[0]):
        v = x[i]
        y[i] = v if v > zero else v * slope


@cpu_kernel
def _leaky_bwd_kernel(dy, x, slope, dx):
    # dy, x: (M,) -> dx: (M,); dx = dy if x > 0 else slope * dy (slope at 0, as torch)
    zero = x.dtype.type(0)
    for i in prange(x.shape[0]):
        g = dy[i]
        dx[i] = g if x[i] > zero else g * slope


def relu_forward(x, *, out=None):
    return _unary(_relu_fwd_kernel, x, out)


def relu_backward(dy, x, y, *, out=None):
    return _unary_backward(_relu_bwd_kernel, dy, x, out)


def leaky_relu_forward(x, negative_slope=0.01, *, out=None):
    return _unary(_leaky_fwd_kernel, x, out, x.dtype.type(negative_slope))


def leaky_relu_backward(dy, x, y, negative_slope=0.01, *, out=None):
    return _unary_backward(_leaky_bwd_kernel, dy, x, out, x.dtype.type(negative_slope))


@cpu_kernel
def _prelu_fwd_kernel(x, w, y):
    # x: (N, C, L), w: (C,) -> y: (N, C, L); y = x if x > 0 else w[c] * x
    n_, c_, l_ = x.shape
    zero = x.dtype.type(0)
    for r in prange(n_ * c_):
        n = r // c_
        c = r - n * c_
        a = w[c]
        for l in range(l_):
            v = x[n, c, l]
            y[n, c, l] = v if v > zero else a * v


@cpu_kernel
def _prelu_bwd_kernel(dy, x, w, dx):
    # dy, x: (N, C, L), w: (C,) -> dx: (N, C, L); dx = dy if x > 0 else w[c] * dy
    n_, c_, l_ = x.shape
    zero = x.dtype.type(0)
    for r in prange(n_ * c_):
        n = r // c_
        c = r - n * c_
        a = w[c]
        for l in range(l_):
            g = dy[n, c, l]
            dx[n, c, l] = g if x[n, c, l] > zero else a * g


def _as_ncl(a):
    # (N, C, *) -> (N, C, L) view; a 1-D x (one shared weight only) is (1, 1, M)
    if a.ndim == 1:
        return a.reshape(1, 1, -1)
    return a.reshape(a.shape[0], a.shape[1], -1)


def prelu_forward(x, weight, *, out=None):
    if weight.shape[0] == 1:  # one shared slope: leaky ReLU with slope weight[0]
        return _unary(_leaky_fwd_kernel, x, out, weight[0])
    y = _out(x, out)
    _prelu_fwd_kernel.for_size(x.size)(_as_ncl(x), weight, _as_ncl(y))
    return y


def prelu_backward(dy, x, weight, *, out=None):
    dx_out, dw_out = (None, None) if out is None else out
    if weight.shape[0] == 1:
        dx = _unary_backward(_leaky_bwd_kernel, dy, x, dx_out, weight[0])
        mode = "layer"
    else:
        dx = _out(dy, dx_out)
        _prelu_bwd_kernel.for_size(x.size)(_as_ncl(dy), _as_ncl(x), weight, _as_ncl(dx))
        mode = "channel"
    # dweight[c] = sum over n and positions of x * dy where x <= 0 (float64, fixed order)
    dw = np.empty_like(weight) if dw_out is None else dw_out
    param_grad_sums(x, dy, mode, SUM_X_DY_NONPOS, dw)
    return dx, dw


# ---------------------------------------------------------------- ELU, SELU


@cpu_kernel
def _elu_fwd_kernel(x, poscoef, negcoef, y):
    # x: (M,) -> y: (M,); y = poscoef * x if x > 0 else negcoef * expm1(x)
    # (ELU: poscoef 1, negcoef alpha; SELU: poscoef scale, negcoef alpha * scale, as torch)
    zero = x.dtype.type(0)
    for i in prange(x.shape[0]):
        v = x[i]
        y[i] = v * poscoef if v > zero else vexpm1(v) * negcoef


@cpu_kernel
def _elu_bwd_kernel(dy, x, poscoef, negcoef, dx):
    # dy, x: (M,) -> dx: (M,); dx = poscoef * dy if x > 0 else negcoef * exp(x) * dy.
    # exp(x) rather than y + negcoef: the latter cancels for x << 0 (torch uses exp too).
    zero = x.dtype.type(0)
    for i in prange(x.shape[0]):
        v = x[i]
        g = dy[i]
        dx[i] = g * poscoef if v > zero else g * negcoef * vexp(v)


def elu_forward(x, alpha=1.0, *, out=None):
    t = x.dtype.type
    return _unary(_elu_fwd_kernel, x, out, t(1.0), t(alpha))


def elu_backward(dy, x, y, alpha=1.0, *, out=None):
    t = x.dtype.type
    return _unary_backward(_elu_bwd_kernel, dy, x, out, t(1.0), t(alpha))


def selu_forward(x, *, out=None):
    t = x.dtype.type
    return _unary(_elu_fwd_kernel, x, out, t(SELU_SCALE), t(SELU_ALPHA * SELU_SCALE))


def selu_backward(dy, x, y, *, out=None):
    t = x.dtype.type
    return _unary_backward(_elu_bwd_kernel, dy, x, out, t(SELU_SCALE), t(SELU_ALPHA * SELU_SCALE))


# ---------------------------------------------------------------- sigmoid, tanh


@cpu_kernel
def _sigmoid_fwd_kernel(x, y):
    # x: (M,) -> y: (M,); with z = exp(-|x|) in (0, 1] (never overflows):
    # y = 1 / (1 + z) for x >= 0, z / (1 + z) for x < 0 (no cancellation in either branch)
    one = x.dtype.type(1)
    zero = x.dtype.type(0)
    for i in prange(x.shape[0]):
        v = x[i]
        z = vexp(-abs(v))
        r = one / (one + z)  # one division for both branches
        y[i] = r if v >= zero else z * r


@cpu_kernel
def _sigmoid_bwd_kernel(dy, y, dx):
    # dy, y: (M,) -> dx: (M,); dx = dy * (1 - y) * y (torch's formula, from the output)
    one = y.dtype.type(1)
    for i in prange(y.shape[0]):
        s = y[i]
        dx[i] = dy[i] * (one - s) * s


@cpu_kernel
def _tanh_fwd_kernel(x, y):
    # x: (M,) -> y: (M,); y = tanh(x) (saturates to ±1 without overflow)
    for i in prange(x.shape[0]):
        y[i] = vtanh(x[i])


@cpu_kernel
def _tanh_bwd_kernel(dy, y, dx):
    # dy, y: (M,) -> dx: (M,); dx = dy * (1 - y²) (torch's formula, from the output)
    one = y.dtype.type(1)
    for i in prange(y.shape[0]):
        t = y[i]
        dx[i] = dy[i] * (one - t * t)


def sigmoid_forward(x, *, out=None):
    return _unary(_sigmoid_fwd_kernel, x, out)


def sigmoid_backward(dy, x, y, *, out=None):
    return _unary_backward(_sigmoid_bwd_kernel, dy, y, out)


def tanh_forward(x, *, out=None):
    return _unary(_tanh_fwd_kernel, x, out)


def tanh_backward(dy, x, y, *, out=None):
    return _unary_backward(_tanh_bwd_kernel, dy, y, out)


# ---------------------------------------------------------------- softmax, log-softmax


@cpu_kernel
def _softmax_rows_fwd_kernel(x, y, log):
    # x: (N, C) -> y: (N, C); per row m = max_c x, s = sum_c exp(x - m) (float64),
    # y = exp(x - m) / s, or y = x - m - log(s) for log-softmax
    # One loop per pass over the (L1-resident) row, each vectorised: exp into y, the float64
    # sum of y, then the scaling (exp and the sum in one loop ran 1.6x slower at C = 1000).
    n_, c_ = x.shape
    for n in prange(n_):
        x_row, y_row = x[n], y[n]
        m = row_max(x_row)
        for c in range(c_):
            y_row[c] = vexp(x_row[c] - m)
        s = np.float64(0.0)
        for c in range(c_):
            s += y_row[c]
        if log:  # (x - m) - log(s): never round m + log(s), which is large when |m| is
            ls = x.dtype.type(math.log(s))
            for c in range(c_):
                y_row[c] = strict_sub(x_row[c] - m, ls)
        else:
            inv = x.dtype.type(1.0 / s)
            for c in range(c_):
                y_row[c] *= inv


@cpu_kernel
def _softmax_rows_bwd_kernel(dy, y, dx, log):
    # dy, y: (N, C) -> dx: (N, C); softmax: dx = y * (dy - sum_c dy*y);
    # log-softmax: dx = dy - exp(y) * sum_c dy (sums in float64)
    n_, c_ = y.shape
    for n in prange(n_):
        s = 0.0
        if log:
            for c in range(c_):
                s += dy[n, c]
            st = y.dtype.type(s)
            for c in range(c_):
                dx[n, c] = dy[n, c] - vexp(y[n, c]) * st
        else:
            for c in range(c_):
                s += dy[n, c] * y[n, c]
            st = y.dtype.type(s)
            for c in range(c_):
                dx[n, c] = y[n, c] * (dy[n, c] - st)


@cpu_kernel
def _softmax_fwd_kernel(x, y, log):
    # x: (N, C, L) -> y: (N, C, L); softmax (or log-softmax) over C at every (n, l).
    # Task = (n, positions l0:l1, at most _LBLOCK); per position m = max, s = sum of exps.
    # Rows are sliced as x[n, c, l0:l1] (a contiguous 1-D view: unit stride and no negative
    # index handling for LLVM, 2x faster than x[n, c, l0 + j]).
    # s: exps are summed in float32 over _CBLOCK channels, each partial added to a float64
    # total (error <= _CBLOCK ulp whatever C, at half the cost of converting every term).
    n_, c_, l_ = x.shape
    nb = (l_ + _LBLOCK - 1) // _LBLOCK
    for t in prange(n_ * nb):
        n = t // nb
        l0 = (t - n * nb) * _LBLOCK
        l1 = min(l0 + _LBLOCK, l_)
        w = l1 - l0
        m = x[n, 0, l0:l1].copy()
        for c in range(1, c_):
            xr = x[n, c, l0:l1]
            for j in range(w):
                v = xr[j]
                m[j] = v if v > m[j] else m[j]
        s = np.zeros(w, np.float64)
        sp = np.zeros(w, x.dtype)
        for c0 in range(0, c_, _CBLOCK):
            for c in range(c0, min(c0 + _CBLOCK, c_)):
                xr = x[n, c, l0:l1]
                if log:
                    for j in range(w):
                        sp[j] += vexp(xr[j] - m[j])
                else:
                    yr = y[n, c, l0:l1]
                    for j in range(w):
                        e = vexp(xr[j] - m[j])
                        yr[j] = e
                        sp[j] += e
            for j in range(w):
                s[j] += sp[j]
                sp[j] = 0
        if log:  # y = (x - m) - log(s), the subtraction kept in that order (see rows kernel)
            for j in range(w):
                sp[j] = math.log(s[j])
            for c in range(c_):
                xr = x[n, c, l0:l1]
                yr = y[n, c, l0:l1]
                for j in range(w):
                    yr[j] = strict_sub(xr[j] - m[j], sp[j])
        else:  # y = exp(x - m) * (1 / s)
            for j in range(w):
                sp[j] = 1.0 / s[j]
            for c in range(c_):
                yr = y[n, c, l0:l1]
                for j in range(w):
                    yr[j] *= sp[j]


@cpu_kernel
def _softmax_bwd_kernel(dy, y, dx, log):
    # dy, y: (N, C, L) -> dx: (N, C, L); as _softmax_rows_bwd_kernel at every (n, l), with
    # tasks, row slices and blocked float64 sums as in _softmax_fwd_kernel
    n_, c_, l_ = y.shape
    nb = (l_ + _LBLOCK - 1) // _LBLOCK
    for t in prange(n_ * nb):
        n = t // nb
        l0 = (t - n * nb) * _LBLOCK
        l1 = min(l0 + _LBLOCK, l_)
        w = l1 - l0
        s = np.zeros(w, np.float64)
        sp = np.zeros(w, y.dtype)
        for c0 in range(0, c_, _CBLOCK):
            for c in range(c0, min(c0 + _CBLOCK, c_)):
                gr = dy[n, c, l0:l1]
                if log:
                    for j in range(w):
                        sp[j] += gr[j]
                else:
                    yr = y[n, c, l0:l1]
                    for j in range(w):
                        sp[j] += gr[j] * yr[j]
            for j in range(w):
                s[j] += sp[j]
                sp[j] = 0
        for j in range(w):
            sp[j] = s[j]
        for c in range(c_):
            gr = dy[n, c, l0:l1]
            yr = y[n, c, l0:l1]
            dr = dx[n, c, l0:l1]
            if log:
                for j in range(w):
                    dr[j] = gr[j] - vexp(yr[j]) * sp[j]
            else:
                for j in range(w):
                    dr[j] = yr[j] * (gr[j] - sp[j])


def _softmax(x, out, log):
    y = _out(x, out)
    if x.ndim == 2:
        _softmax_rows_fwd_kernel.for_size(x.size)(x, y, log)
    else:
        _softmax_fwd_kernel.for_size(x.size)(_as_ncl(x), _as_ncl(y), log)
    return y


def _softmax_backward(dy, y, out, log):
    dx = _out(dy, out)
    if y.ndim == 2:
        _softmax_rows_bwd_kernel.for_size(y.size)(dy, y, dx, log)
    else:
        _softmax_bwd_kernel.for_size(y.size)(_as_ncl(dy), _as_ncl(y), _as_ncl(dx), log)
    return dx


def softmax_forward(x, *, out=None):
    return _softmax(x, out, False)


def softmax_backward(dy, x, y, *, out=None):
    return _softmax_backward(dy, y, out, False)


def log_softmax_forward(x, *, out=None):
    return _softmax(x, out, True)


def log_softmax_backward(dy, x, y, *, out=None):
    return _softmax_backward(dy, y, out, True)
