"""Batch normalisation: y = gamma * (x - mean) * inv_std + beta, statistics per channel.

Shapes: x (N, F) ("1d": statistics per feature over N) or (N, C, H, W) ("2d": statistics per
channel over N, H, W); gamma, beta, running_mean, running_var, mean, inv_std are (C,) with
C = F or C, all in x's dtype. n = elements per channel (N, or N*H*W).

Semantics are PyTorch's ``F.batch_norm`` (seed catalogue §1.3):
- training: mean and var are the batch mean and the biased batch variance,
  inv_std = 1 / sqrt(var + eps). Running statistics, when given, are updated in place:
  running = (1 - momentum) * running + momentum * batch, with the unbiased var * n / (n - 1).
- eval: mean = running_mean, inv_std = 1 / sqrt(running_var + eps); nothing is updated.
Backward, with xhat = (x - mean) * inv_std: dbeta = sum dy, dgamma = sum dy * xhat and
    training: dx = gamma * inv_std / n * (n * dy - dbeta - xhat * dgamma)
    eval:     dx = gamma * inv_std * dy          (mean and inv_std are constants)
"""

import numpy as np

from nnkern import _validate as v
from nnkern.backend import device_of
from nnkern.ops._dispatch import impl

_X_LAYOUT = "2-D (N, features) or 4-D (N, C, H, W)"


def _check_x(op, name, x):
    v.check_array(op, name, x, ndim=(2, 4), layout=_X_LAYOUT)


def _check_vector(op, name, a, x):
    """A per-channel vector: 1-D, shape (C,), same dtype as x."""
    v.check_array(op, name, a, ndim=1, layout="1-D (one value per channel of x)", dtype=x.dtype)
    v.check_shape(op, name, a, (x.shape[1],), "one per channel of x")


def _check_training(op, training):
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"{op}: training must be True or False, got {type(training).__name__} "
                        f"{training!r}")
    return bool(training)


def _check_batch_size(op, x):
    """Training statistics need more than one value per channel (PyTorch raises too)."""
    n = x.shape[0] * (x.shape[2] * x.shape[3] if len(x.shape) == 4 else 1)
    if n == 1:
        raise ValueError(f"{op}: expected more than 1 value per channel when training, got x of "
                         f"shape {tuple(x.shape)}")


def batch_norm_forward(x, gamma, beta, running_mean=None, running_var=None, *, training=True,
                       momentum=0.1, eps=1e-5, out=None):
    """Normalise x per channel. Returns (y, mean, inv_std), y written into ``out`` when given.

    mean and inv_std are new (C,) arrays in x's dtype: the batch statistics in training, the
    running ones in eval; batch_norm_backward needs them. In training, running_mean and
    running_var (both or neither) are updated in place; in eval they are required.
    """
    op = "batch_norm_forward"
    _check_x(op, "x", x)
    _check_vector(op, "gamma", gamma, x)
    _check_vector(op, "beta", beta, x)
    if (running_mean is None) != (running_var is None):
        raise ValueError(f"{op}: running_mean and running_var must be given together (or both "
                         "None)")
    if running_mean is not None:
        _check_vector(op, "running_mean", running_mean, x)
        _check_vector(op, "running_var", running_var, x)
    training = _check_training(op, training)
    momentum = v.check_float(op, "momentum", momentum, 0.0, 1.0)
    eps = v.check_float(op, "eps", eps, 0.0)
    if training:
        _check_batch_size(op, x)
    elif running_mean is None:
        raise ValueError(f"{op}: eval mode (training=False) needs running_mean and running_var")
    v.check_out(op, "out", out, x.shape, x.dtype)
    device = device_of(x, gamma, beta, running_mean, running_var, out,
                       names=("x", "gamma", "beta", "running_mean", "running_var", "out"))
    return impl(__name__, device).batch_norm_forward(
        x, gamma, beta, running_mean, running_var, training=training, momentum=momentum,
        eps=eps, out=out)


def batch_norm_backward(dy, x, gamma, mean, inv_std, *, training=True, out=None):
    """Gradients of batch_norm_forward. Returns (dx, dgamma, dbeta).

    mean and inv_std are what the forward returned (with the same ``training``). ``out`` is an
    optional tuple (dx, dgamma, dbeta) of buffers (entries may be None).
    """
    op = "batch_norm_backward"
    _check_x(op, "x", x)
    v.check_array(op, "dy", dy, ndim=(2, 4), layout=_X_LAYOUT, dtype=x.dtype)
    v.check_shape(op, "dy", dy, x.shape, "the shape of x")
    for name, a in (("gamma", gamma), ("mean", mean), ("inv_std", inv_std)):
        _check_vector(op, name, a, x)
    training = _check_training(op, training)
    if out is None:
        out = (None, None, None)
    elif not isinstance(out, (tuple, list)) or len(out) != 3:
        raise ValueError(f"{op}: out must be a tuple (dx, dgamma, dbeta) of buffers or None "
                         f"entries, got {type(out).__name__}")
    out = tuple(out)
    for name, buf, shape in zip(("dx", "dgamma", "dbeta"), out,
                                (x.shape, gamma.shape, gamma.shape)):
        v.check_out(op, f"out {name}", buf, shape, x.dtype)
    device = device_of(dy, x, gamma, mean, inv_std, *out,
                       names=("dy", "x", "gamma", "mean", "inv_std", "out dx", "out dgamma",
                              "out dbeta"))
    return impl(__name__, device).batch_norm_backward(dy, x, gamma, mean, inv_std,
                                                      training=training, out=out)
