"""NumPy reference for pooling: the executable spec, slow and obvious on purpose.

Every pool works on an explicitly padded copy of x, big enough for ceil-mode windows that run
past the right/bottom padding, plus masks that say which padded positions are real input
(``real``) and which lie inside the padded input (``padded``). A window is then a plain slice.
Loops run over output positions and kernel taps; each step is vectorised over (N, C).
"""

import numpy as np

from nnkern._validate import window_output_size
from nnkern.ops._ref import into


def _pair(value):
    return (value, value) if isinstance(value, (int, np.integer)) else tuple(value)


def _geometry(x_shape, kernel_size, stride, padding, dilation, ceil_mode):
    k, p, d = _pair(kernel_size), _pair(padding), _pair(dilation)
    s = k if stride is None else _pair(stride)
    size = x_shape[2:]
    o = tuple(window_output_size("ref", size[a], k[a], s[a], p[a], d[a], ceil_mode)
              for a in range(2))
    # padded extent: the padded input, or further when the last ceil-mode window sticks out
    ext = tuple(max(size[a] + 2 * p[a], (o[a] - 1) * s[a] + d[a] * (k[a] - 1) + 1)
                for a in range(2))
    real = np.zeros(ext, bool)
    real[p[0]:p[0] + size[0], p[1]:p[1] + size[1]] = True
    padded = np.zeros(ext, bool)
    padded[:size[0] + 2 * p[0], :size[1] + 2 * p[1]] = True
    return k, s, p, d, o, ext, real, padded


def _pad(x, p, ext, fill=0.0):
    xp = np.full(x.shape[:2] + ext, fill, x.dtype)
    xp[:, :, p[0]:p[0] + x.shape[2], p[1]:p[1] + x.shape[3]] = x
    return xp


def max_pool2d_forward(x, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False, *,
                       out=None):
    n_, c_, h_, w_ = x.shape
    k, s, p, d, o, ext, real, _ = _geometry(x.shape, kernel_size, stride, padding, dilation,
                                            ceil_mode)
    xp = _pad(x, p, ext)
    # flat index h*W + w of each padded position into the input plane (-1 outside the input)
    index = np.full(ext, -1, np.int64)
    index[p[0]:p[0] + h_, p[1]:p[1] + w_] = np.arange(h_ * w_).reshape(h_, w_)
    y = np.full((n_, c_) + o, -np.inf, x.dtype)
    argmax = np.full((n_, c_) + o, -1, np.int32)
    for oh in range(o[0]):
        for ow in range(o[1]):
            best = np.full((n_, c_), -np.inf, x.dtype)
            where = np.full((n_, c_), -1, np.int64)
            started = False
            for i in range(k[0]):          # row-major scan of the window
                for j in range(k[1]):
                    hp, wp = oh * s[0] + i * d[0], ow * s[1] + j * d[1]
                    if not real[hp, wp]:
                        continue           # padding never wins
                    if not started:  # PyTorch starts from the first real tap, at -inf
                        where[:] = index[hp, wp]
                        started = True
                    val = xp[:, :, hp, wp]
                    take = (val > best) | np.isnan(val)  # PyTorch CPU: later NaNs win
                    best = np.where(take, val, best)
                    where = np.where(take, index[hp, wp], where)
            y[:, :, oh, ow] = best
            argmax[:, :, oh, ow] = where
    return into(out[0] if out else None, y), into(out[1] if out else None, argmax)


def max_pool2d_backward(dy, argmax, x_shape, *, out=None):
    n_, c_, h_, w_ = x_shape
    dx = np.zeros((n_, c_, h_ * w_), dy.dtype)
    for n in range(n_):
        for c in range(c_):
            idx = argmax[n, c].ravel()
            keep = idx >= 0  # -1: a window without input elements
            np.add.at(dx[n, c], idx[keep], dy[n, c].ravel()[keep])
    return into(out, dx.reshape(x_shape))


def avg_pool2d_forward(x, kernel_size, stride=None, padding=0, ceil_mode=False,
                       count_include_pad=True, *, out=None):
    k, s, p, _, o, ext, real, padded = _geometry(x.shape, kernel_size, stride, padding, 1,
                                                 ceil_mode)
    counted = padded if count_include_pad else real
    xp = _pad(x, p, ext)
    y = np.zeros(x.shape[:2] + o, x.dtype)
    for oh in range(o[0]):
        for ow in range(o[1]):
            win = (slice(oh * s[0], oh * s[0] + k[0]), slice(ow * s[1], ow * s[1] + k[1]))
            y[:, :, oh, ow] = xp[:, :, win[0], win[1]].sum(axis=(2, 3)) / counted[win].sum()
    return into(out, y)


def avg_pool2d_backward(dy, x_shape, kernel_size, stride=None, padding=0, ceil_mode=False,
                        count_include_pad=True, *, out=None):
    k, s, p, _, o, ext, real, padded = _geometry(x_shape, kernel_size, stride, padding, 1,
                                                 ceil_mode)
    counted = padded if count_include_pad else real
    dxp = np.zeros(tuple(x_shape[:2]) + ext, dy.dtype)
    for oh in range(o[0]):
        for ow in range(o[1]):
            win = (slice(oh * s[0], oh * s[0] + k[0]), slice(ow * s[1], ow * s[1] + k[1]))
            dxp[:, :, win[0], win[1]] += (dy[:, :, oh, ow] / counted[win].sum())[:, :, None, None]
    return into(out, dxp[:, :, p[0]:p[0] + x_shape[2], p[1]:p[1] + x_shape[3]])


def global_avg_pool2d_forward(x, *, out=None):
    return into(out, x.mean(axis=(2, 3), dtype=np.float64).astype(x.dtype))


def global_avg_pool2d_backward(dy, x_shape, *, out=None):
    dx = np.broadcast_to((dy / (x_shape[2] * x_shape[3]))[:, :, None, None], x_shape)
    return into(out, dx.astype(dy.dtype))
