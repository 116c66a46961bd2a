"""Batch normalization (Ioffe & Szegedy; seed catalogue §1.3) with PyTorch's semantics:

* training: normalise with the batch mean and *biased* variance; update the running
  statistics with weight ``momentum`` on the new batch and the *unbiased* batch variance;
  ``momentum=None`` gives the cumulative average (factor 1/num_batches_tracked);
* eval: normalise with the running statistics;
* parameters gamma (init 1) and beta (init 0), saved as "weight"/"bias" like PyTorch.
"""

import numpy as np

from nnkern import functional as F
from nnkern.layers._common import (
    check_features,
    check_input_rank,
    check_positive_int,
    cpu_backend,
    fusion,
)
from nnkern.layers.base import Layer


class _BatchNorm(Layer):
    STATE_NAMES = {"gamma": "weight", "beta": "bias"}
    RANKS, LAYOUT = (), ""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, *, dtype="float32"):
        super().__init__()
        name = type(self).__name__
        num_features = check_positive_int(name, "num_features", num_features)
        if not (isinstance(eps, (int, float)) and eps > 0):
            raise ValueError(f"{name}: eps must be a positive number, got {eps!r}")
        if momentum is not None and not (isinstance(momentum, (int, float))
                                         and 0.0 <= momentum <= 1.0):
            raise ValueError(f"{name}: momentum must be in [0, 1] or None, got {momentum!r}")
        self.config = dict(num_features=num_features, eps=float(eps), momentum=momentum,
                           affine=bool(affine), track_running_stats=bool(track_running_stats))
        dtype = np.dtype(dtype)
        self._dtype = dtype
        self.gamma = self.beta = None
        if affine:
            self.gamma = self.add_parameter("gamma", np.ones(num_features, dtype))
            self.beta = self.add_parameter("beta", np.zeros(num_features, dtype))
        else:  # constant gamma = 1, beta = 0, kept as buffers that are not saved
            self._ones, self._zeros = np.ones(num_features, dtype), np.zeros(num_features, dtype)
        if track_running_stats:
            self.add_buffer("running_mean", np.zeros(num_features, dtype))
            self.add_buffer("running_var", np.ones(num_features, dtype))
        self.num_batches_tracked = 0
        self._x = self._x_later = None  # the last forward's input (see _remember)

    # PyTorch's names for gamma and beta
    @property
    def weight(self):
        return self.gamma

    @property
    def bias(self):
        return self.beta

    def _affine(self):
        if self.gamma is not None:
            return self.gamma.data, self.beta.data
        if self._ones.dtype != self.dtype:
            self._ones, self._zeros = self._ones.astype(self.dtype), self._zeros.astype(self.dtype)
        return self._ones, self._zeros

    def _forward(self, x, training):
        return self._bn_forward(x, training, False)

    def _fast(self, x):
        """True when ``x`` (a CPU array from _prepare_input) can go straight to the kernels."""
        return x.shape[1:] == self._checked and x.shape[0] > 0 and type(x) is np.ndarray

    def _bn_forward(self, x, training, relu):
        """Batch norm, then ReLU when ``relu`` (Sequential's fused BatchNorm -> ReLU, one pass
        over the output; needs ``_fast(x)``)."""
        fast = self._fast(x)
        if not fast:
            check_input_rank(self, x, self.RANKS, self.LAYOUT)
            check_features(self, "channels" if x.ndim > 2 else "features", x.shape[1],
                           self.config["num_features"], x.shape)
        use_batch_stats, momentum, *running = self._step_args(training)
        gamma, beta = self._affine()
        x4 = x.reshape(x.shape + (1,)) if x.ndim == 3 else x  # (N, C, L) -> (N, C, L, 1)
        coef = None
        if fast and (not use_batch_stats or x.size > x.shape[1]):  # > 1 value per channel
            if fusion():
                y, mean, inv_std, coef = cpu_backend("batch_norm").forward(
                    x4, gamma, beta, *running, use_batch_stats, momentum, self.config["eps"],
                    relu)
            else:
                y, mean, inv_std = cpu_backend("batch_norm").batch_norm_forward(
                    x4, gamma, beta, *running, training=use_batch_stats, momentum=momentum,
                    eps=self.config["eps"])
        else:
            y, mean, inv_std = F.batch_norm_forward(
                x4, gamma, beta, *running, training=use_batch_stats, momentum=momentum,
                eps=self.config["eps"])
            if type(x) is np.ndarray:  # validated: the same per-sample shape skips the checks
                self._checked = x.shape[1:]
        self._remember(x4, use_batch_stats, mean, inv_std, coef)
        return y if x4 is x else y.reshape(x.shape)

    def _uses_batch_stats(self, training):
        return training or not self.config["track_running_stats"]

    def _step_args(self, training):
        """(use_batch_stats, momentum, running_mean, running_var) for a forward in this mode
        (running_* None without running statistics); counts the batch when training updates
        the running statistics."""
        track = self.config["track_running_stats"]
        momentum = self.config["momentum"]
        if training and track:
            self.num_batches_tracked += 1
            if momentum is None:
                momentum = 1.0 / self.num_batches_tracked
        running = (self._buffers["running_mean"], self._buffers["running_var"]) if track \
            else (None, None)
        return self._uses_batch_stats(training), 0.0 if momentum is None else momentum, *running

    def _remember(self, x, batch_stats, mean, inv_std, coef, x_later=None):
        """What backward needs: the input (as 2-D or 4-D), the mode, the statistics, and the
        fused ReLU's coefficients (None when unfused). ``x_later``: with x None, a function
        that returns it (a fused Dense -> BN step keeps x in its own layout; this layer's own
        backward, which few runs reach, puts it together)."""
        self._x, self._x_later, self._batch_stats, self._coef = x, x_later, batch_stats, coef
        self._mean, self._inv_std = mean, inv_std

    def _input(self):
        """The last forward's input (see ``_remember``)."""
        if self._x is None and self._x_later is not None:
            self._x, self._x_later = self._x_later(), None
        return self._x

    def _backward(self, dy):
        return self._bn_backward(dy, False)

    def _bn_backward(self, dy, relu):
        """dy: the gradient of the output (of the ReLU's output when ``relu``, after a fused
        forward)."""
        gamma, _ = self._affine()
        out = (None, self.gamma.grad, self.beta.grad) if self.gamma is not None else None
        x = self._input()
        if self._checked is not None and type(dy) is np.ndarray and type(x) is np.ndarray \
                and dy.size == x.size and dy.dtype == x.dtype \
                and (dy.shape == x.shape or dy.shape == x.shape[:3]):
            dy4 = dy if dy.ndim == x.ndim else dy.reshape(x.shape)
            if fusion():
                dx, _, _ = cpu_backend("batch_norm").backward(
                    dy4, x, gamma, self._mean, self._inv_std, self._batch_stats, relu,
                    self._coef, out)
            else:
                dx, _, _ = cpu_backend("batch_norm").batch_norm_backward(dy4, x, gamma, self._mean,
                                                         self._inv_std,
                                                         training=self._batch_stats, out=out)
            return dx.reshape(dy.shape)
        dx, _, _ = F.batch_norm_backward(dy.reshape(x.shape), x, gamma, self._mean,
                                         self._inv_std, training=self._batch_stats, out=out)
        return dx.reshape(dy.shape)

    def state_dict(self, prefix=""):
        state = super().state_dict(prefix)
        if self.config["track_running_stats"]:
            state[prefix + "num_batches_tracked"] = np.array(self.num_batches_tracked, np.int64)
        return state

    def load_state_dict(self, state, strict=True):
        state = dict(state)
        tracked = state.pop("num_batches_tracked", None)
        super().load_state_dict(state, strict)
        if tracked is not None:
            self.num_batches_tracked = int(np.asarray(tracked))
        return self


class BatchNorm1D(_BatchNorm):
    """``BatchNorm1D(num_features, eps=1e-5, momentum=0.1)`` over (N, F) (or (N, C, L))."""
    RANKS, LAYOUT = (2, 3), "2-D (N, features) or 3-D (N, C, L)"


class BatchNorm2D(_BatchNorm):
    """``BatchNorm2D(num_features, eps=1e-5, momentum=0.1)``: per channel over (N, H, W)."""
    RANKS, LAYOUT = (4,), "4-D (N, C, H, W)"
