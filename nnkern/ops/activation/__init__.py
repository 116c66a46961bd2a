"""Activation ops, PyTorch semantics: ReLU, leaky ReLU, PReLU, ELU, SELU, sigmoid, tanh,
softmax and log-softmax.

Every backward takes the upstream gradient and both the forward input x and output y (layers
keep both), and uses whichever gives the cheaper or more accurate rule:
  relu        y = max(x, 0)                         dx = dy * [x > 0]
  leaky_relu  y = x if x > 0 else a x               dx = dy if x > 0 else a dy
  prelu       y = x if x > 0 else w[c] x            dx = dy if x > 0 else w[c] dy,
                                                    dw[c] = sum over x <= 0 of x dy
  elu         y = x if x > 0 else α expm1(x)        dx = dy if x > 0 else α exp(x) dy
  selu        y = λ elu(x, α)                       dx = λ dy if x > 0 else λ α exp(x) dy
  sigmoid     y = 1 / (1 + exp(-x))                 dx = dy (1 - y) y
  tanh        y = tanh(x)                           dx = dy (1 - y²)
  softmax     y = exp(x - m) / Σ_c exp(x - m)       dx = y (dy - Σ_c dy y)
  log_softmax y = x - m - log Σ_c exp(x - m)        dx = dy - exp(y) Σ_c dy
At a kink (x = 0) the derivative is PyTorch's: 0 for ReLU, the negative-side slope for leaky
ReLU and PReLU, α (λα) for ELU (SELU). Softmax and log-softmax reduce over axis 1: x is
(N, C) or (N, C, H, W) (in general (N, C, *)), normalised over C at every position.
Element-wise activations accept any array of rank >= 1.

Shapes and dtypes: x, y, dy and every result share one shape and one dtype (float32 or
float64); arrays must be C-contiguous. ``out=`` buffers (same shape and dtype) receive the
result and are returned; ``prelu_backward``'s ``out`` is a pair (dx, dweight), entries may be
None. ``out`` may be the input itself (in-place).
"""

from nnkern import _validate as v
from nnkern.backend import device_of
from nnkern.ops._dispatch import impl

#: SELU constants (Klambauer et al. 2017), as in PyTorch.
SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def _check_x(op, x, min_ndim=1, layout=None):
    v.check_array(op, "x", x)
    if len(x.shape) < min_ndim:
        want = layout or f"at least {min_ndim}-D"
        raise ValueError(f"{op}: x must be {want}, got shape {tuple(x.shape)}")


def _check_like(op, name, a, x):
    v.check_array(op, name, a, dtype=x.dtype)
    v.check_shape(op, name, a, x.shape, "the shape of x")


def _forward(op, x, out, names=("x", "out")):
    v.check_out(op, "out", out, x.shape, x.dtype)
    return device_of(x, out, names=names)


def _backward(op, dy, x, y, out, min_ndim=1, layout=None):
    _check_x(op, x, min_ndim, layout)
    _check_like(op, "y", y, x)
    _check_like(op, "dy", dy, x)
    v.check_out(op, "out", out, x.shape, x.dtype)
    return device_of(dy, x, y, out, names=("dy", "x", "y", "out"))


def _slope(op, negative_slope):
    # torch accepts any slope for leaky ReLU (negative ones included); it must be finite
    return v.check_float(op, "negative_slope", negative_slope)


def _alpha(op, alpha):
    return v.check_float(op, "alpha", alpha, low=0.0, low_open=True)


# ---------------------------------------------------------------- ReLU family


def relu_forward(x, *, out=None):
    """y = max(x, 0) (NaN stays NaN)."""
    _check_x("relu_forward", x)
    device = _forward("relu_forward", x, out)
    return impl(__name__, device).relu_forward(x, out=out)


def relu_backward(dy, x, y, *, out=None):
    """dx = dy where x > 0, else 0."""
    device = _backward("relu_backward", dy, x, y, out)
    return impl(__name__, device).relu_backward(dy, x, y, out=out)


def leaky_relu_forward(x, negative_slope=0.01, *, out=None):
    """y = x if x > 0 else negative_slope * x."""
    op = "leaky_relu_forward"
    _check_x(op, x)
    negative_slope = _slope(op, negative_slope)
    device = _forward(op, x, out)
    return impl(__name__, device).leaky_relu_forward(x, negative_slope, out=out)


def leaky_relu_backward(dy, x, y, negative_slope=0.01, *, out=None):
    """dx = dy if x > 0 else negative_slope * dy."""
    op = "leaky_relu_backward"
    negative_slope = _slope(op, negative_slope)
    device = _backward(op, dy, x, y, out)
    return impl(__name__, device).leaky_relu_backward(dy, x, y, negative_slope, out=out)


def _check_prelu(op, x, weight):
    _check_x(op, x)
    v.check_array(op, "weight", weight, ndim=1, layout="1-D (1,) or (C,)", dtype=x.dtype)
    k = weight.shape[0]
    if k != 1:
        if len(x.shape) < 2:
            raise ValueError(f"{op}: weight has {k} parameters (one per channel) but x of "
                             f"shape {tuple(x.shape)} has no channel axis; use weight of "
                             "shape (1,) or x of shape (N, C, ...)")
        if k != x.shape[1]:
            raise ValueError(f"{op}: weight must have shape (1,) or (C,) = ({x.shape[1]},) "
                             f"with C = x.shape[1], got {tuple(weight.shape)}")


def prelu_forward(x, weight, *, out=None):
    """y = x if x > 0 else weight[c] * x; weight (1,) (shared) or (C,), C = x.shape[1]."""
    op = "prelu_forward"
    _check_prelu(op, x, weight)
    v.check_out(op, "out", out, x.shape, x.dtype)
    device = device_of(x, weight, out, names=("x", "weight", "out"))
    return impl(__name__, device).prelu_forward(x, weight, out=out)


def prelu_backward(dy, x, weight, *, out=None):
    """Returns (dx, dweight): dx = dy if x > 0 else weight[c] * dy, dweight[c] = sum of
    x * dy over the elements of channel c (all elements for a shared weight) with x <= 0,
    accumulated in float64 in a fixed order (deterministic)."""
    op = "prelu_backward"
    _check_prelu(op, x, weight)
    _check_like(op, "dy", dy, x)
    dx_out, dw_out = (None, None) if out is None else tuple(out)
    v.check_out(op, "out dx", dx_out, x.shape, x.dtype)
    v.check_out(op, "out dweight", dw_out, weight.shape, x.dtype)
    device = device_of(dy, x, weight, dx_out, dw_out,
                       names=("dy", "x", "weight", "out dx", "out dweight"))
    return impl(__name__, device).prelu_backward(dy, x, weight, out=(dx_out, dw_out))


# ---------------------------------------------------------------- ELU, SELU


def elu_forward(x, alpha=1.0, *, out=None):
    """y = x if x > 0 else alpha * expm1(x); alpha > 0."""
    op = "elu_forward"
    _check_x(op, x)
    alpha = _alpha(op, alpha)
    device = _forward(op, x, out)
    return impl(__name__, device).elu_forward(x, alpha, out=out)


def elu_backward(dy, x, y, alpha=1.0, *, out=None):
    """dx = dy if x > 0 else alpha * exp(x) * dy."""
    op = "elu_backward"
    alpha = _alpha(op, alpha)
    device = _backward(op, dy, x, y, out)
    return impl(__name__, device).elu_backward(dy, x, y, alpha, out=out)


def selu_forward(x, *, out=None):
    """y = SELU_SCALE * (x if x > 0 else SELU_ALPHA * expm1(x))."""
    _check_x("selu_forward", x)
    device = _forward("selu_forward", x, out)
    return impl(__name__, device).selu_forward(x, out=out)


def selu_backward(dy, x, y, *, out=None):
    """dx = SELU_SCALE * dy if x > 0 else SELU_SCALE * SELU_ALPHA * exp(x) * dy."""
    device = _backward("selu_backward", dy, x, y, out)
    return impl(__name__, device).selu_backward(dy, x, y, out=out)


# ---------------------------------------------------------------- sigmoid, tanh


def sigmoid_forward(x, *, out=None):
    """y = 1 / (1 + exp(-x)), evaluated without overflow for any x."""
    _check_x("sigmoid_forward", x)
    device = _forward("sigmoid_forward", x, out)
    return impl(__name__, device).sigmoid_forward(x, out=out)


def sigmoid_backward(dy, x, y, *, out=None):
    """dx = dy * (1 - y) * y."""
    device = _backward("sigmoid_backward", dy, x, y, out)
    return impl(__name__, device).sigmoid_backward(dy, x, y, out=out)


def tanh_forward(x, *, out=None):
    """y = tanh(x)."""
    _check_x("tanh_forward", x)
    device = _forward("tanh_forward", x, out)
    return impl(__name__, device).tanh_forward(x, out=out)


def tanh_backward(dy, x, y, *, out=None):
    """dx = dy * (1 - y²)."""
    device = _backward("tanh_backward", dy, x, y, out)
    return impl(__name__, device).tanh_backward(dy, x, y, out=out)


# ---------------------------------------------------------------- softmax, log-softmax

_SOFTMAX_LAYOUT = "at least 2-D: (N, C) or (N, C, H, W), normalised over C"


def softmax_forward(x, *, out=None):
    """y = exp(x - m) / sum_c exp(x - m) over axis 1, m = max over axis 1."""
    _check_x("softmax_forward", x, 2, _SOFTMAX_LAYOUT)
    device = _forward("softmax_forward", x, out)
    return impl(__name__, device).softmax_forward(x, out=out)


def softmax_backward(dy, x, y, *, out=None):
    """dx = y * (dy - sum_c dy * y)."""
    device = _backward("softmax_backward", dy, x, y, out, 2, _SOFTMAX_LAYOUT)
    return impl(__name__, device).softmax_backward(dy, x, y, out=out)


def log_softmax_forward(x, *, out=None):
    """y = x - m - log sum_c exp(x - m) over axis 1."""
    _check_x("log_softmax_forward", x, 2, _SOFTMAX_LAYOUT)
    device = _forward("log_softmax_forward", x, out)
    return impl(__name__, device).log_softmax_forward(x, out=out)


def log_softmax_backward(dy, x, y, *, out=None):
    """dx = dy - exp(y) * sum_c dy."""
    device = _backward("log_softmax_backward", dy, x, y, out, 2, _SOFTMAX_LAYOUT)
    return impl(__name__, device).log_softmax_backward(dy, x, y, out=out)
