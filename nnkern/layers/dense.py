"""Dense (fully connected) layer: y = x @ weight.T + bias, weight (out, in) as in PyTorch."""

import numpy as np

from nnkern import functional as F
from nnkern.layers._common import (
    check_features,
    check_input_rank,
    check_positive_int,
    cpu_backend,
    init_array,
    make_rng,
)
from nnkern.layers.base import Layer


class Dense(Layer):
    """``Dense(in_features, out_features, bias=True)``; input (N, in), output (N, out).

    weight_init/bias_init: initializer names or callables (default: PyTorch's U(±1/√in)).
    """

    def __init__(self, in_features, out_features, bias=True, *, weight_init="torch_default",
                 bias_init="torch_default", rng=None, dtype="float32"):
        super().__init__()
        in_features = check_positive_int("Dense", "in_features", in_features)
        out_features = check_positive_int("Dense", "out_features", out_features)
        self.config = dict(in_features=in_features, out_features=out_features, bias=bool(bias))
        rng = make_rng(rng)
        shape = (out_features, in_features)
        self.weight = self.add_parameter("weight", init_array(weight_init, shape, rng, dtype))
        self.bias = None
        if bias:
            kwargs = {"fan_in": in_features} if bias_init == "torch_default" else {}
            self.bias = self.add_parameter(
                "bias", init_array(bias_init, (out_features,), rng, dtype, **kwargs))

    def _forward(self, x, training):
        if self._fast(x):
            self._x = x
            return cpu_backend("dense").dense_forward(x, self.weight.data,
                                           None if self.bias is None else self.bias.data)
        check_input_rank(self, x, (2,), "2-D (N, in_features)")
        check_features(self, "features", x.shape[1], self.config["in_features"], x.shape)
        self._x = x
        y = F.dense_forward(x, self.weight.data, None if self.bias is None else self.bias.data)
        if type(x) is np.ndarray:  # validated: the same per-sample shape can skip the checks
            self._checked = x.shape[1:]
        return y

    def _fast(self, x):
        """True when ``x`` (a CPU array from _prepare_input) can go straight to the kernels."""
        return x.shape[1:] == self._checked and x.shape[0] > 0 and type(x) is np.ndarray

    def _forward_relu(self, x):
        """max(x @ w.T + b, 0) in one pass over y (Sequential's fused Dense -> ReLU; needs
        ``_fast(x)``). Returns y; backward then takes the ReLU's output gradient."""
        self._x = x
        self._relu_y = y = cpu_backend("dense").dense_forward(
            x, self.weight.data, None if self.bias is None else self.bias.data, relu=True)
        return y

    def _backward(self, dy):
        return self._dense_backward(dy, None)

    def _dense_backward(self, dy, relu_y):
        x, bias = self._x, self.bias
        out = (None, self.weight.grad, None if bias is None else bias.grad)
        if self._checked is not None and type(dy) is np.ndarray and type(x) is np.ndarray \
                and dy.shape == (x.shape[0], self.config["out_features"]) \
                and dy.dtype == x.dtype:
            extra = {} if relu_y is None else {"relu_y": relu_y}
            dx, _, _ = cpu_backend("dense").dense_backward(
                dy, x, self.weight.data, has_bias=bias is not None,
                need_dx=self.needs_input_grad, out=out, **extra)
            return dx
        dx, _, _ = F.dense_backward(dy, x, self.weight.data, has_bias=bias is not None,
                                    need_dx=self.needs_input_grad, out=out)
        return dx

    def output_shape(self, input_shape):
        return (input_shape[0], self.config["out_features"])
