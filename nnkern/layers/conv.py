"""2-D convolution layer (cross-correlation, NCHW), weight (out, in, kh, kw) as in PyTorch."""

from nnkern import _validate as v
from nnkern import functional as F
from nnkern.layers._common import (
    check_features,
    check_input_rank,
    check_positive_int,
    init_array,
    make_rng,
)
from nnkern.layers.base import Layer


class Conv2D(Layer):
    """``Conv2D(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
    bias=True)``; padding may be an int, a pair, "valid" or "same" (as in PyTorch)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                 bias=True, *, weight_init="torch_default", bias_init="torch_default", rng=None,
                 dtype="float32"):
        super().__init__()
        in_channels = check_positive_int("Conv2D", "in_channels", in_channels)
        out_channels = check_positive_int("Conv2D", "out_channels", out_channels)
        kernel_size = v.pair("Conv2D", "kernel_size", kernel_size, 1)
        stride = v.pair("Conv2D", "stride", stride, 1)
        dilation = v.pair("Conv2D", "dilation", dilation, 1)
        if isinstance(padding, str):
            if padding not in ("valid", "same"):
                raise ValueError(f"Conv2D: padding must be an int, a pair, 'valid' or 'same', "
                                 f"got {padding!r}")
            if padding == "same" and stride != (1, 1):
                raise ValueError("Conv2D: padding='same' needs stride 1 (as in PyTorch)")
        else:
            padding = v.pair("Conv2D", "padding", padding, 0)
        self.config = dict(in_channels=in_channels, out_channels=out_channels,
                           kernel_size=kernel_size, stride=stride, padding=padding,
                           dilation=dilation, bias=bool(bias))
        rng = make_rng(rng)
        shape = (out_channels, in_channels) + kernel_size
        self.weight = self.add_parameter("weight", init_array(weight_init, shape, rng, dtype))
        self.bias = None
        if bias:
            fan_in = in_channels * kernel_size[0] * kernel_size[1]
            kwargs = {"fan_in": fan_in} if bias_init == "torch_default" else {}
            self.bias = self.add_parameter(
                "bias", init_array(bias_init, (out_channels,), rng, dtype, **kwargs))

    def _geometry(self):
        c = self.config
        return c["stride"], c["padding"], c["dilation"]

    def _forward(self, x, training):
        check_input_rank(self, x, (4,), "4-D (N, C, H, W)")
        check_features(self, "channels", x.shape[1], self.config["in_channels"], x.shape)
        self._x = x
        return F.conv2d_forward(x, self.weight.data,
                                None if self.bias is None else self.bias.data, *self._geometry())

    def _backward(self, dy):
        dx, _, _ = F.conv2d_backward(
            dy, self._x, self.weight.data, *self._geometry(), has_bias=self.bias is not None,
            need_dx=self.needs_input_grad,
            out=(None, self.weight.grad, None if self.bias is None else self.bias.grad))
        return dx

    def output_shape(self, input_shape):
        n, _, h, w = input_shape
        (kh, kw), (sh, sw), padding, (dh, dw) = (self.config["kernel_size"],
                                                  *self._geometry())
        if padding == "same":
            return (n, self.config["out_channels"], h, w)
        ph, pw = (0, 0) if padding == "valid" else padding
        oh = v.window_output_size("Conv2D", h, kh, sh, ph, dh, axis="H")
        ow = v.window_output_size("Conv2D", w, kw, sw, pw, dw, axis="W")
        return (n, self.config["out_channels"], oh, ow)
