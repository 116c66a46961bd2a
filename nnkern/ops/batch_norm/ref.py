"""NumPy reference for batch norm: the executable spec, slow and obvious on purpose.

Everything is computed in float64 on an (N, C, L) view of x (L = 1 for (N, F) input, H*W for
NCHW) and cast back to x's dtype at the end.
"""

import numpy as np

from nnkern.ops._ref import into


def _as_ncl(a):
    # (N, F) -> (N, F, 1); (N, C, H, W) -> (N, C, H*W)
    return a.reshape(a.shape[0], a.shape[1], -1).astype(np.float64)


def _per_channel(v):
    return v.astype(np.float64)[None, :, None]  # (C,) -> (1, C, 1), broadcasts over (N, C, L)


def batch_norm_forward(x, gamma, beta, running_mean=None, running_var=None, *, training=True,
                       momentum=0.1, eps=1e-5, out=None):
    x3 = _as_ncl(x)
    n = x3.shape[0] * x3.shape[2]  # values per channel
    if training:
        mean = x3.mean(axis=(0, 2))
        var = ((x3 - mean[None, :, None]) ** 2).mean(axis=(0, 2))  # biased
        if running_mean is not None:
            running_mean[...] = (1 - momentum) * running_mean.astype(np.float64) + momentum * mean
            running_var[...] = ((1 - momentum) * running_var.astype(np.float64)
                                + momentum * var * n / (n - 1))  # unbiased estimate
    else:
        mean = running_mean.astype(np.float64)
        var = running_var.astype(np.float64)
    inv_std = 1.0 / np.sqrt(var + eps)
    y = _per_channel(gamma) * (x3 - mean[None, :, None]) * inv_std[None, :, None] \
        + _per_channel(beta)
    return (into(out, y.reshape(x.shape).astype(x.dtype)), mean.astype(x.dtype),
            inv_std.astype(x.dtype))


def batch_norm_backward(dy, x, gamma, mean, inv_std, *, training=True, out=None):
    out = (None, None, None) if out is None else out
    x3, dy3 = _as_ncl(x), _as_ncl(dy)
    n = x3.shape[0] * x3.shape[2]
    xhat = (x3 - _per_channel(mean)) * _per_channel(inv_std)
    dbeta = dy3.sum(axis=(0, 2))
    dgamma = (dy3 * xhat).sum(axis=(0, 2))
    if training:  # mean and inv_std depend on x
        dx = (_per_channel(gamma) * _per_channel(inv_std) / n
              * (n * dy3 - dbeta[None, :, None] - xhat * dgamma[None, :, None]))
    else:  # mean and inv_std are constants
        dx = _per_channel(gamma) * _per_channel(inv_std) * dy3
    return (into(out[0], dx.reshape(x.shape).astype(x.dtype)),
            into(out[1], dgamma.astype(x.dtype)), into(out[2], dbeta.astype(x.dtype)))
