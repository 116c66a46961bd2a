"""Dense (fully connected) layer: y = x @ weight.T + bias, weight (out, in) as in PyTorch."""

from nnkern import functional as F
from nnkern.layers._common import (
    check_features,
    check_input_rank,
    check_positive_int,
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
        check_input_rank(self, x, (2,), "2-D (N, in_features)")
        check_features(self, "features", x.shape[1], self.config["in_features"], x.shape)
        self._x = x
        return F.dense_forward(x, self.weight.data, None if self.bias is None else self.bias.data)

    def _backward(self, dy):
        dx, _, _ = F.dense_backward(
            dy, self._x, self.weight.data, has_bias=self.bias is not None,
            need_dx=self.needs_input_grad,
            out=(None, self.weight.grad, None if self.bias is None else self.bias.grad))
        return dx

    def output_shape(self, input_shape):
        return (input_shape[0], self.config["out_features"])
