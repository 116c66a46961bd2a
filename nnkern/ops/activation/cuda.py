"""CUDA kernels for the activations (formulas and PyTorch conventions: ``__init__``).

Element-wise ops: one fused grid-stride kernel per forward and per backward over flat views
(inputs are C-contiguous), each element read and written once. The math is the CPU kernels'
(same branch structure, so NaN and the kinks behave identically): two-branch sigmoid from
exp(-|x|) (never overflows), expm1 for ELU/SELU, tanh and the sigmoid/tanh derivatives from the
output as torch does. libdevice's expf/expm1f/tanhf/logf are within 2 ulp, so float32 stays
float32 end to end (constants as ``x.dtype.type(c)``, scalar options cast on the host).

PReLU: the forward is element-wise with weight index (i // L) % C (C = 1 for a shared weight);
the backward's dweight is a deterministic reduction (``shift_scale.cuda.param_grad_sums``:
per-tile sums in a fixed order, no atomics) whose kernel also writes dx in the same pass.

Softmax / log-softmax over axis 1 of an (N, C, L) view: a *group* of g threads (a power of two,
up to a whole block) handles one position (n, l) and strides over its C channels; the group's
max and sum of exponentials are pairwise trees in shared memory. Within a block, for L == 1
(rows of C contiguous values) the g members of a group are consecutive threads (coalesced
along C); for L > 1 consecutive threads are consecutive positions (coalesced along L) and a
group's members are ``p = blockDim / g`` threads apart. g shrinks (down to one thread per
position, a serial loop over C) when there are enough positions to fill the GPU without it.
Three passes over a position's values (max; sum of exp; write), the re-reads hitting cache.
"""

import functools
import math

from numba import cuda

from nnkern.ops._cuda import (
    MAX_BLOCKS,
    THREADS,
    device_array,
    device_function,
    empty_like,
    grid_1d,
    kernel,
)
from nnkern.ops.activation import SELU_ALPHA, SELU_SCALE
from nnkern.ops.shift_scale.cuda import DX_PRELU, SUM_X_DY_NONPOS, param_grad_sums

#: threads that fill an H100 well enough for a memory-bound kernel (132 SMs x 1024)
_TARGET_THREADS = 1 << 17


def _flat(a):
    return a.reshape(a.size)


def _pow2_ceil(n):
    return 1 << max(0, int(n) - 1).bit_length()


def _grid(n):
    """grid_1d(n), with blocks of fewer threads (a warp at least) for arrays smaller than a
    block: no idle threads in tiny launches (and much faster under the simulator)."""
    return grid_1d(n, min(THREADS, max(32, _pow2_ceil(n))))


def _out(x, out):
    return empty_like(x) if out is None else device_array(out)


def _unary(kernel_, x, out, *args):
    # y = f(x, *args) over flat views; kernel signature (x, *args, y)
    x = device_array(x)
    y = _out(x, out)
    kernel_[_grid(x.size)](_flat(x), *args, _flat(y))
    return y


def _unary_backward(kernel_, dy, a, out, *args):
    # dx = f'(a, *args) * dy, a = x or y (whichever the rule reads); kernel (dy, a, *args, dx)
    dy, a = device_array(dy), device_array(a)
    dx = _out(dy, out)
    kernel_[_grid(dy.size)](_flat(dy), _flat(a), *args, _flat(dx))
    return dx


# ---------------------------------------------------------------- ReLU, leaky ReLU, PReLU


@kernel
def _relu_fwd_kernel(x, y):
    # x: (M,) -> y: (M,); y = max(x, 0) with NaN kept (as torch.clamp_min)
    zero = x.dtype.type(0)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.shape[0], step):
        v = x[i]
        y[i] = zero if v < zero else v


@kernel
def _relu_bwd_kernel(dy, x, dx):
    # dy, x: (M,) -> dx: (M,); dx = dy where x > 0 else 0 (derivative 0 at 0, as torch)
    zero = x.dtype.type(0)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.shape[0], step):
        dx[i] = zero if x[i] <= zero else dy[i]


@kernel
def _leaky_fwd_kernel(x, slope, y):
    # x: (M,) -> y: (M,); y = x if x > 0 else slope * x
    zero = x.dtype.type(0)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.shape[0], step):
        v = x[i]
        y[i] = v if v > zero else v * slope


@kernel
def _leaky_bwd_kernel(dy, x, slope, dx):
    # dy, x: (M,) -> dx: (M,); dx = dy if x > 0 else slope * dy (slope at 0, as torch)
    zero = x.dtype.type(0)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.shape[0], step):
        g = dy[i]
        dx[i] = g if x[i] > zero else g * slope


@kernel
def _prelu_fwd_kernel(x, w, length, y):
    # x: (M,) flat view of (N, C, L), length = L, w: (C,) -> y: (M,);
    # y = x if x > 0 else w[c] * x, c = (i // L) % C (C = 1: one shared weight, L = M)
    zero = x.dtype.type(0)
    c_ = w.shape[0]
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.shape[0], step):
        v = x[i]
        y[i] = v if v > zero else w[(i // length) % c_] * v


def relu_forward(x, *, out=None):
    return _unary(_relu_fwd_kernel, x, out)


def relu_backward(dy, x, y, *, out=None):
    return _unary_backward(_relu_bwd_kernel, dy, x, out)


def leaky_relu_forward(x, negative_slope=0.01, *, out=None):
    return _unary(_leaky_fwd_kernel, x, out, x.dtype.type(negative_slope))


def leaky_relu_backward(dy, x, y, negative_slope=0.01, *, out=None):
    return _unary_backward(_leaky_bwd_kernel, dy, x, out, x.dtype.type(negative_slope))


def _prelu_length(x, weight):
    # L of the (N, C, L) view: all of x for one shared weight, else the size of x[n, c]
    return x.size if weight.shape[0] == 1 else x.size // (x.shape[0] * x.shape[1])


def prelu_forward(x, weight, *, out=None):
    x, weight = device_array(x), device_array(weight)
    y = _out(x, out)
    _prelu_fwd_kernel[_grid(x.size)](_flat(x), weight, _prelu_length(x, weight), _flat(y))
    return y


def prelu_backward(dy, x, weight, *, out=None):
    dx_out, dw_out = (None, None) if out is None else out
    dy, x, weight = device_array(dy), device_array(x), device_array(weight)
    dx = _out(dy, dx_out)
    dw = empty_like(weight) if dw_out is None else device_array(dw_out)
    # dweight[c] = sum of x * dy where x <= 0 over n and positions, with dx written in the
    # same pass (dx = dy if x > 0 else w[c] * dy)
    mode = "layer" if weight.shape[0] == 1 else "channel"
    param_grad_sums(x, dy, mode, SUM_X_DY_NONPOS, dw, w=weight, dx=dx, rule=DX_PRELU)
    return dx, dw


# ---------------------------------------------------------------- ELU, SELU


@kernel
def _elu_fwd_kernel(x, poscoef, negcoef, y):
    # x: (M,) -> y: (M,); y = poscoef * x if x > 0 else negcoef * expm1(x)
    # (ELU: poscoef 1, negcoef alpha; SELU: poscoef scale, negcoef alpha * scale, as torch)
    zero = x.dtype.type(0)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.shape[0], step):
        v = x[i]
        y[i] = v * poscoef if v > zero else math.expm1(v) * negcoef


@kernel
def _elu_bwd_kernel(dy, x, poscoef, negcoef, dx):
    # dy, x: (M,) -> dx: (M,); dx = poscoef * dy if x > 0 else negcoef * exp(x) * dy
    # (exp(x), not y + negcoef, which cancels for x << 0; torch uses exp too)
    zero = x.dtype.type(0)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.shape[0], step):
        v = x[i]
        g = dy[i]
        dx[i] = g * poscoef if v > zero else g * negcoef * math.exp(v)


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


@kernel
def _sigmoid_fwd_kernel(x, y):
    # x: (M,) -> y: (M,); with z = exp(-|x|) in (0, 1] (never overflows):
    # y = 1 / (1 + z) for x >= 0, z / (1 + z) for x < 0 (no cancellation in either branch)
    one = x.dtype.type(1)
    zero = x.dtype.type(0)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.shape[0], step):
        v = x[i]
        z = math.exp(-abs(v))
        r = one / (one + z)
        y[i] = r if v >= zero else z * r


@kernel
def _sigmoid_bwd_kernel(dy, y, dx):
    # dy, y: (M,) -> dx: (M,); dx = dy * (1 - y) * y (torch's formula, from the output)
    one = y.dtype.type(1)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, y.shape[0], step):
        s = y[i]
        dx[i] = dy[i] * (one - s) * s


@kernel
def _tanh_fwd_kernel(x, y):
    # x: (M,) -> y: (M,); y = tanh(x)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, x.shape[0], step):
        y[i] = math.tanh(x[i])


@kernel
def _tanh_bwd_kernel(dy, y, dx):
    # dy, y: (M,) -> dx: (M,); dx = dy * (1 - y²) (torch's formula, from the output)
    one = y.dtype.type(1)
    start, step = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, y.shape[0], step):
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


@functools.lru_cache(maxsize=1024)
def group_plan(n, c, l):
    """Launch plan (blocks, threads, g, jstride) for a kernel in which a group of g threads
    reduces over the C values of each of the N*L positions of an (N, C, L) array (see the
    module docstring); jstride is the thread distance between members of a group."""
    positions = n * l
    g = min(_pow2_ceil(c), THREADS)
    while g > 1 and positions * (g // 2) >= _TARGET_THREADS:
        g //= 2
    p = THREADS // g
    if positions < p:  # small problems: a smaller block, not idle threads
        p = _pow2_ceil(positions)
    blocks = min(-(-positions // p), MAX_BLOCKS)
    return blocks, g * p, g, (1 if l == 1 else p)


@device_function
def _group_members(g, jstride):
    # (t, j, q, lead): this thread, its member index j in [0, g), its position slot q within
    # the block, and the thread index of member 0 of its group (where group results land)
    t = cuda.threadIdx.x
    p = cuda.blockDim.x // g
    if jstride == 1:
        j = t % g
        q = t // g
    else:
        j = t // p
        q = t - j * p
    return t, j, q, t - j * jstride


@device_function
def _group_reduce(sh, t, j, g, jstride, use_max):
    # pairwise tree over the g members of t's group (sh[t] holds each member's value, stored
    # and synchronised by the caller): at each level member j < s combines member j + s.
    # Returns the group's result (the max, or the sum); every thread of the block must call it.
    s = g // 2
    while s > 0:
        if j < s:
            a = sh[t]
            b = sh[t + s * jstride]
            if use_max:
                sh[t] = b if b > a else a
            else:
                sh[t] = a + b
        cuda.syncthreads()  # this level is complete before the next one (or the caller) reads
        s //= 2
    return sh[t - j * jstride]


@kernel
def _softmax_fwd_kernel(x, y, g, jstride, log):
    # x: (N, C, L) -> y: (N, C, L); per position (n, l): m = max_c x, s = sum_c exp(x - m),
    # y = exp(x - m) / s, or y = (x - m) - log(s) for log-softmax (the subtraction kept in
    # that order: m + log(s) would round when |m| is large). A NaN makes its row NaN.
    sh_max = cuda.shared.array(THREADS, x.dtype)
    sh_sum = cuda.shared.array(THREADS, x.dtype)
    n_, c_, l_ = x.shape
    positions = n_ * l_
    t, j, q, lead = _group_members(g, jstride)
    p = cuda.blockDim.x // g
    zero = x.dtype.type(0)
    one = x.dtype.type(1)
    for base in range(cuda.blockIdx.x * p, positions, cuda.gridDim.x * p):
        pos = base + q
        active = pos < positions
        n = pos // l_
        l = pos - n * l_
        m = x.dtype.type(-math.inf)
        if active:
            for c in range(j, c_, g):
                v = x[n, c, l]
                m = v if v > m else m
        sh_max[t] = m
        cuda.syncthreads()  # all members' maxima are stored before the tree reads them
        m = _group_reduce(sh_max, t, j, g, jstride, True)
        s = zero
        if active:
            for c in range(j, c_, g):
                s += math.exp(x[n, c, l] - m)
        sh_sum[t] = s
        cuda.syncthreads()  # all members' sums are stored before the tree reads them
        s = _group_reduce(sh_sum, t, j, g, jstride, False)
        if active:
            if log:
                ls = math.log(s)
                for c in range(j, c_, g):
                    y[n, c, l] = (x[n, c, l] - m) - ls
            else:
                inv = one / s
                for c in range(j, c_, g):
                    y[n, c, l] = math.exp(x[n, c, l] - m) * inv
        cuda.syncthreads()  # group results are read before the next iteration overwrites them


@kernel
def _softmax_bwd_kernel(dy, y, dx, g, jstride, log):
    # dy, y: (N, C, L) -> dx: (N, C, L); per position, softmax: dx = y * (dy - sum_c dy*y);
    # log-softmax: dx = dy - exp(y) * sum_c dy (groups as in _softmax_fwd_kernel)
    sh_sum = cuda.shared.array(THREADS, y.dtype)
    n_, c_, l_ = y.shape
    positions = n_ * l_
    t, j, q, lead = _group_members(g, jstride)
    p = cuda.blockDim.x // g
    zero = y.dtype.type(0)
    for base in range(cuda.blockIdx.x * p, positions, cuda.gridDim.x * p):
        pos = base + q
        active = pos < positions
        n = pos // l_
        l = pos - n * l_
        s = zero
        if active:
            if log:
                for c in range(j, c_, g):
                    s += dy[n, c, l]
            else:
                for c in range(j, c_, g):
                    s += dy[n, c, l] * y[n, c, l]
        sh_sum[t] = s
        cuda.syncthreads()  # all members' sums are stored before the tree reads them
        s = _group_reduce(sh_sum, t, j, g, jstride, False)
        if active:
            if log:
                for c in range(j, c_, g):
                    dx[n, c, l] = dy[n, c, l] - math.exp(y[n, c, l]) * s
            else:
                for c in range(j, c_, g):
                    dx[n, c, l] = y[n, c, l] * (dy[n, c, l] - s)
        cuda.syncthreads()  # group results are read before the next iteration overwrites them


def _ncl(a):
    return a.reshape(a.shape[0], a.shape[1], a.size // (a.shape[0] * a.shape[1]))


def _softmax(x, out, log):
    x = device_array(x)
    y = _out(x, out)
    xv = _ncl(x)
    blocks, threads, g, jstride = group_plan(*xv.shape)
    _softmax_fwd_kernel[blocks, threads](xv, _ncl(y), g, jstride, log)
    return y


def _softmax_backward(dy, y, out, log):
    dy, y = device_array(dy), device_array(y)
    dx = _out(dy, out)
    yv = _ncl(y)
    blocks, threads, g, jstride = group_plan(*yv.shape)
    _softmax_bwd_kernel[blocks, threads](_ncl(dy), yv, _ncl(dx), g, jstride, log)
    return dx


def softmax_forward(x, *, out=None):
    return _softmax(x, out, False)


def softmax_backward(dy, x, y, *, out=None):
    return _softmax_backward(dy, y, out, False)


def log_softmax_forward(x, *, out=None):
    return _softmax(x, out, True)


def log_softmax_backward(dy, x, y, *, out=None):
    return _softmax_backward(dy, y, out, True)
