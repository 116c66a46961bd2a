"""Preprocessing for image data sets: scaling, standardisation, whitening, padding, splits.

Everything is vectorised NumPy and returns float32 unless a ``dtype`` is given (float64 for
checks). Statistics are always fitted on the training set and reused for validation and test
data (S0:1187, S3:511-516): ``fit(x_train)`` then ``transform(x)``. They are accumulated in
float64 over chunks of examples, so fitting on uint8 CIFAR-10 needs no float64 copy of it.
"""

import numbers

import numpy as np

_CHUNK_ELEMENTS = 1 << 22  # elements per chunk when accumulating statistics (32 MiB of float64)


# -- argument checks -----------------------------------------------------------------------------
def _check_data(fn, name, x, min_ndim=2):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{fn}: {name} must be a numpy array, got {type(x).__name__}")
    if x.dtype.kind not in "uif":
        raise TypeError(f"{fn}: {name} must have an integer or float dtype, got {x.dtype}")
    if x.ndim < min_ndim:
        raise ValueError(f"{fn}: {name} must have at least {min_ndim} dimensions (N, ...), "
                         f"got shape {x.shape}")
    if x.shape[0] == 0:
        raise ValueError(f"{fn}: {name} is empty: shape {x.shape}")


def _check_float_dtype(fn, dtype):
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"{fn}: dtype must be float32 or float64, got {dtype}")
    return dtype


def _check_labels(fn, y, n=None):
    y = np.asarray(y)
    if y.dtype.kind not in "iu":
        raise TypeError(f"{fn}: labels must be integers, got dtype {y.dtype}")
    if y.ndim != 1:
        raise ValueError(f"{fn}: labels must be 1-D (N,), got shape {y.shape}")
    if n is not None and len(y) != n:
        raise ValueError(f"{fn}: x has {n} examples but y has {len(y)} labels")
    return y


def _rng(seed):
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        from nnkern.init import default_rng
        return default_rng()
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return np.random.default_rng(int(seed))
    raise TypeError(f"seed must be None, an int or a numpy Generator, got {type(seed).__name__}")


def _chunks(x):
    """Slices of ``x`` along axis 0 holding about _CHUNK_ELEMENTS elements each."""
    per_example = max(1, int(np.prod(x.shape[1:], dtype=np.int64)))
    step = max(1, _CHUNK_ELEMENTS // per_example)
    for start in range(0, x.shape[0], step):
        yield x[start:start + step]


# -- scaling -------------------------------------------------------------------------------------
def to_float(x, dtype=np.float32):
    """uint8 images (any shape) -> floats in [0, 1]: ``x / 255``, correctly rounded."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"to_float: x must be a numpy array, got {type(x).__name__}")
    if x.dtype != np.uint8:
        raise TypeError(f"to_float: x must be uint8 (raw images), got {x.dtype}; float data is "
                        "already converted")
    dtype = _check_float_dtype("to_float", dtype)
    return np.divide(x, dtype.type(255), dtype=dtype)


class Standardizer:
    """``x -> (x - mean) / sqrt(var + eps)`` with mean and var fitted on the training set.

    mode:
      * ``"global"``: one mean and variance over every value of the training set — S2's
        "global feature standardization" (S2:1177), the default;
      * ``"channel"``: one per channel, over examples and pixels (axis 1 is the channel axis);
      * ``"feature"``: one per input feature (pixel and channel), over examples — S0's
        per-attribute normalisation (S0:919-928, 1187). Constant features (e.g. MNIST borders)
        have var 0 and are multiplied by 1/sqrt(eps).

    var is the population variance (1/n, S2 eq 2.6). Input may be uint8 or float; the output
    has ``dtype`` (float32 by default). Fitted state: ``mean``, ``var`` (float64, shape () /
    (C,) / x.shape[1:]), ``std = sqrt(var + eps)``; ``state_dict()`` / ``load_state_dict()``.
    """

    MODES = ("global", "channel", "feature")

    def __init__(self, mode="global", eps=1e-8, dtype=np.float32):
        if mode not in self.MODES:
            raise ValueError(f"Standardizer: mode must be one of {self.MODES}, got {mode!r}")
        if not isinstance(eps, numbers.Real) or not eps >= 0:
            raise ValueError(f"Standardizer: eps must be a number >= 0, got {eps!r}")
        self.mode = mode
        self.eps = float(eps)
        self.dtype = _check_float_dtype("Standardizer", dtype)
        self.mean = None
        self.var = None
        self._sample_shape = None

    def _reduce_axes(self, ndim):
        if self.mode == "global":
            return tuple(range(ndim))
        if self.mode == "channel":
            return (0,) + tuple(range(2, ndim))
        return (0,)

    def _broadcast(self, a, ndim):
        """A statistic reshaped to broadcast against a batch of rank ``ndim``."""
        if self.mode == "global":
            return a
        if self.mode == "channel":
            return a.reshape((1, -1) + (1,) * (ndim - 2))
        return a[None]

    def fit(self, x):
        """Fit mean and var on ``x`` (the training set, (N, ...)); returns self."""
        _check_data("Standardizer.fit", "x", x)
        axes = self._reduce_axes(x.ndim)
        count = int(np.prod([x.shape[a] for a in axes], dtype=np.int64))
        total = 0.0
        for chunk in _chunks(x):  # two passes: mean, then squared deviations (no cancellation)
            total = total + chunk.sum(axis=axes, dtype=np.float64)
        mean = np.asarray(total / count)
        if not np.all(np.isfinite(mean)):
            raise ValueError("Standardizer.fit: x contains NaN or infinite values")
        mean_b = self._broadcast(mean, x.ndim)
        squares = 0.0
        for chunk in _chunks(x):
            d = chunk.astype(np.float64) - mean_b
            squares = squares + np.square(d, out=d).sum(axis=axes)
        self.mean = mean
        self.var = np.asarray(squares / count)
        self._sample_shape = x.shape[1:]
        return self

    @property
    def std(self):
        self._check_fitted("std")
        return np.sqrt(self.var + self.eps)

    def _check_fitted(self, what):
        if self.mean is None:
            raise RuntimeError(f"Standardizer.{what}: call fit(x_train) first")

    def transform(self, x):
        """Standardise ``x`` with the fitted statistics; returns a new array of ``dtype``."""
        self._check_fitted("transform")
        _check_data("Standardizer.transform", "x", x)
        if self.mode == "channel" and (x.ndim < 2 or x.shape[1] != self.mean.shape[0]):
            raise ValueError(f"Standardizer.transform: fitted on {self.mean.shape[0]} channels "
                             f"(axis 1), got x of shape {x.shape}")
        if self.mode == "feature" and x.shape[1:] != self.mean.shape:
            raise ValueError(f"Standardizer.transform: fitted on examples of shape "
                             f"{self.mean.shape}, got x of shape {x.shape}")
        dt = self.dtype
        mean = self._broadcast(self.mean, x.ndim).astype(dt)
        inv_std = self._broadcast(1.0 / np.sqrt(self.var + self.eps), x.ndim).astype(dt)
        y = x.astype(dt)  # always a copy: the input is never modified
        y -= mean
        y *= inv_std
        return y

    def fit_transform(self, x):
        return self.fit(x).transform(x)

    def state_dict(self):
        self._check_fitted("state_dict")
        return {"mode": self.mode, "eps": self.eps, "mean": self.mean.copy(),
                "var": self.var.copy()}

    def load_state_dict(self, state):
        if state.get("mode") != self.mode:
            raise ValueError(f"Standardizer.load_state_dict: state is for mode "
                             f"{state.get('mode')!r}, this standardizer has mode {self.mode!r}")
        self.eps = float(state["eps"])
        self.mean = np.asarray(state["mean"], np.float64).copy()
        self.var = np.asarray(state["var"], np.float64).copy()
        return self

    def __repr__(self):
        return f"Standardizer(mode={self.mode!r}, eps={self.eps:g}, " \
               f"fitted={self.mean is not None})"


class Whitening:
    """PCA or ZCA whitening of flattened examples, fitted on the training set (S2 eq 2.7-2.9).

    With X the centred training data (N, D) (D = features per example):
      Sigma = X^T X / N;  U, S = eigenvectors/eigenvalues of Sigma (its SVD, S descending)
      PCA:  X_w = X U / sqrt(S + eps)           -> (N, D), components by decreasing variance
      ZCA:  X_zca = X_w U^T = X W,  W = U diag(1/sqrt(S + eps)) U^T   -> same shape as x
    ZCA is the whitening closest to the input, so images still look like images. eps is in
    the squared units of the data (for x in [0, 1], 1e-2 to 1e-1 is usual): directions with
    variance below eps are damped rather than blown up. The whitened training data has
    covariance U diag(S / (S + eps)) U^T, the identity where S >> eps.

    Fitted state: ``mean`` (D,), ``eigenvalues`` S (D,), ``components`` U (D, D), ``matrix``
    (the D x D map applied after centring), all float64.
    """

    MODES = ("zca", "pca")
    MAX_FEATURES = 16384  # Sigma and U are D x D float64: 2 GiB each at this size

    def __init__(self, mode="zca", eps=1e-2, dtype=np.float32):
        if mode not in self.MODES:
            raise ValueError(f"{type(self).__name__}: mode must be one of {self.MODES}, "
                             f"got {mode!r}")
        if not isinstance(eps, numbers.Real) or not eps >= 0:
            raise ValueError(f"{type(self).__name__}: eps must be a number >= 0, got {eps!r}")
        self.mode = mode
        self.eps = float(eps)
        self.dtype = _check_float_dtype(type(self).__name__, dtype)
        self.mean = self.eigenvalues = self.components = self.matrix = None
        self._sample_shape = None

    def fit(self, x):
        """Fit on ``x`` (the training set, (N, ...)); returns self."""
        name = f"{type(self).__name__}.fit"
        _check_data(name, "x", x)
        n = x.shape[0]
        flat = x.reshape(n, -1)
        d = flat.shape[1]
        if d > self.MAX_FEATURES:
            raise ValueError(f"{name}: {d} features per example is too many for a D x D "
                             f"covariance (limit {self.MAX_FEATURES}); crop or downsample first")
        mean = 0.0
        for chunk in _chunks(flat):
            mean = mean + chunk.sum(axis=0, dtype=np.float64)
        mean = mean / n
        if not np.all(np.isfinite(mean)):
            raise ValueError(f"{name}: x contains NaN or infinite values")
        sigma = np.zeros((d, d))
        for chunk in _chunks(flat):
            c = chunk.astype(np.float64) - mean
            sigma += c.T @ c
        sigma /= n
        # Sigma is symmetric positive semi-definite, so its SVD U S U^T is its eigen-
        # decomposition; eigh is the faster, symmetric solver. Round-off can make tiny
        # eigenvalues slightly negative: clip them to 0.
        s, u = np.linalg.eigh(sigma)
        s, u = np.clip(s[::-1], 0.0, None), u[:, ::-1]
        if self.eps == 0 and s[-1] <= 0:
            raise ValueError(f"{name}: the covariance has zero eigenvalues and eps=0; use eps > 0")
        scale = 1.0 / np.sqrt(s + self.eps)
        matrix = u * scale  # U diag(1/sqrt(S + eps)): PCA whitening
        if self.mode == "zca":
            matrix = matrix @ u.T  # rotate back: W = U diag(1/sqrt(S + eps)) U^T
        self.mean, self.eigenvalues, self.components, self.matrix = mean, s, u, matrix
        self._sample_shape = x.shape[1:]
        return self

    def transform(self, x):
        """Whiten ``x`` with the fitted map: ZCA keeps x's shape, PCA returns (N, D)."""
        name = f"{type(self).__name__}.transform"
        if self.matrix is None:
            raise RuntimeError(f"{name}: call fit(x_train) first")
        _check_data(name, "x", x)
        if x.shape[1:] != self._sample_shape:
            raise ValueError(f"{name}: fitted on examples of shape {self._sample_shape}, got x "
                             f"of shape {x.shape}")
        n = x.shape[0]
        flat = x.reshape(n, -1)
        out = np.empty(flat.shape, self.dtype)
        matrix = self.matrix.astype(self.dtype)
        start = 0
        for chunk in _chunks(flat):
            centred = (chunk.astype(np.float64) - self.mean).astype(self.dtype)
            np.matmul(centred, matrix, out=out[start:start + len(chunk)])
            start += len(chunk)
        return out.reshape(x.shape) if self.mode == "zca" else out

    def fit_transform(self, x):
        return self.fit(x).transform(x)

    def __repr__(self):
        return f"{type(self).__name__}(mode={self.mode!r}, eps={self.eps:g}, " \
               f"fitted={self.matrix is not None})"


class ZCAWhitening(Whitening):
    """``Whitening(mode="zca")``: x -> (x - mean) U diag(1/sqrt(S + eps)) U^T, same shape."""

    def __init__(self, eps=1e-2, dtype=np.float32):
        super().__init__("zca", eps, dtype)


class PCAWhitening(Whitening):
    """``Whitening(mode="pca")`` (S2 eq 2.9): x -> (x - mean) U / sqrt(S + eps), shape (N, D)."""

    def __init__(self, eps=1e-2, dtype=np.float32):
        super().__init__("pca", eps, dtype)


# -- padding -------------------------------------------------------------------------------------
def _pair(fn, name, v):
    if isinstance(v, numbers.Integral) and not isinstance(v, bool):
        v = (int(v), int(v))
    elif isinstance(v, (tuple, list)) and len(v) == 2 and all(
            isinstance(i, numbers.Integral) and not isinstance(i, bool) for i in v):
        v = (int(v[0]), int(v[1]))
    else:
        raise TypeError(f"{fn}: {name} must be an int or a pair of ints, got {v!r}")
    if min(v) < 0:
        raise ValueError(f"{fn}: {name} must be >= 0, got {v}")
    return v


def _check_images(fn, x):
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{fn}: x must be a numpy array, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{fn}: x must be 4-D (N, C, H, W), got shape {x.shape}")


def _pad(x, top, bottom, left, right, value):
    n, c, h, w = x.shape
    y = np.full((n, c, h + top + bottom, w + left + right), value, dtype=x.dtype)
    y[:, :, top:top + h, left:left + w] = x
    return y


def pad(x, padding, value=0):
    """Pad (N, C, H, W) images with ``value`` (default 0): ``padding`` pixels on each side.

    ``padding`` is an int or (pad_h, pad_w); ``pad(x, 2)`` turns 28x28 into 32x32. The result
    is a new array of x's dtype.
    """
    _check_images("pad", x)
    ph, pw = _pair("pad", "padding", padding)
    return _pad(x, ph, ph, pw, pw, value)


def pad_to(x, size, value=0):
    """Pad (N, C, H, W) images with ``value`` to ``size`` (int or (H, W)), centred.

    When the difference is odd the extra row/column goes at the bottom/right.
    """
    _check_images("pad_to", x)
    th, tw = _pair("pad_to", "size", size)
    h, w = x.shape[2:]
    if th < h or tw < w:
        raise ValueError(f"pad_to: target size {(th, tw)} is smaller than the images "
                         f"{(h, w)}; pad_to only pads")
    top, left = (th - h) // 2, (tw - w) // 2
    return _pad(x, top, th - h - top, left, tw - w - left, value)


# -- labels and splits ---------------------------------------------------------------------------
def one_hot(y, num_classes, dtype=np.float32):
    """Integer labels (N,) -> (N, num_classes) one-hot rows (e_y, S0:287)."""
    y = _check_labels("one_hot", y)
    if not isinstance(num_classes, numbers.Integral) or isinstance(num_classes, bool) \
            or num_classes < 1:
        raise ValueError(f"one_hot: num_classes must be a positive int, got {num_classes!r}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"one_hot: labels must be in [0, {num_classes}), got values "
                         f"{y.min()}..{y.max()}")
    out = np.zeros((len(y), int(num_classes)), dtype=np.dtype(dtype))
    out[np.arange(len(y)), y] = 1
    return out


def stratified_indices(y, n, rng):
    """Sorted indices of ``n`` examples drawn without replacement, stratified by label.

    Class c gets floor(n * N_c / N) examples plus one for the classes with the largest
    remainders (ties: lower class first), so the total is exactly n and proportions are
    kept; which examples of a class are taken is random (``rng``).
    """
    classes, inverse, counts = np.unique(y, return_inverse=True, return_counts=True)
    quota = counts * (n / len(y))
    k = np.floor(quota).astype(np.int64)
    short = n - int(k.sum())
    if short:
        k[np.argsort(-(quota - k), kind="stable")[:short]] += 1
    perm = rng.permutation(len(y))
    perm = perm[np.argsort(inverse[perm], kind="stable")]  # grouped by class, random within
    starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    rank = np.arange(len(y)) - np.repeat(starts, counts)  # position inside its class group
    return np.sort(perm[rank < np.repeat(k, counts)])


def train_val_split(x, y, val_fraction=0.1, seed=None, stratify=False):
    """Hold out a random ``val_fraction`` of (x, y) for validation (S2:1134 uses 10%).

    Returns ``(x_train, y_train), (x_val, y_val)``; both keep the original order of examples.
    The validation set has round(val_fraction * N) examples. ``seed``: int, numpy Generator,
    or None for nnkern's default generator (``nnkern.manual_seed``). ``stratify=True`` keeps
    the class proportions in both parts (see ``stratified_indices``).
    """
    _check_data("train_val_split", "x", x, min_ndim=1)
    y = _check_labels("train_val_split", y, len(x))
    if not isinstance(val_fraction, numbers.Real) or not 0 < val_fraction < 1:
        raise ValueError(f"train_val_split: val_fraction must be in (0, 1), got {val_fraction!r}")
    n = len(x)
    n_val = int(round(val_fraction * n))
    if not 0 < n_val < n:
        raise ValueError(f"train_val_split: val_fraction={val_fraction} of {n} examples gives "
                         f"{n_val} validation examples; both parts must be non-empty")
    rng = _rng(seed)
    if stratify:
        val = stratified_indices(y, n_val, rng)
    else:
        val = np.sort(rng.permutation(n)[:n_val])
    keep = np.ones(n, dtype=bool)
    keep[val] = False
    return (x[keep], y[keep]), (x[val], y[val])
