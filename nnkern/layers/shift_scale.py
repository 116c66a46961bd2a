"""The learnable shifting and scaling layers of seed 000 (Bui 2018, §5; catalogue §1.4).

Shift: y = x + b (b init 0, saved as "bias"); Scale: y = w ⊙ x (w init 1, saved as "weight").
``mode`` sets how the parameter is shared:
* "element": one value per element of a sample (shape x.shape[1:]);
* "channel": one per channel (shape (C,), broadcast over H and W); on 2-D (N, F) input this is
  one per feature, i.e. element-wise, as the thesis does after dense layers;
* "layer": one scalar for the whole layer.
``shape`` may be given (the per-sample shape for "element", the channel count for "channel");
otherwise the parameter is sized by the first input it sees. Optimizers allocate their state at
the first step, so creating one before that first forward is fine.
"""

import numpy as np

from nnkern import functional as F
from nnkern.layers.base import Layer

MODES = ("element", "channel", "layer")


class _ShiftScale(Layer):
    PARAM, FILL = "", 0.0

    def __init__(self, mode, shape=None, *, dtype="float32"):
        super().__init__()
        name = type(self).__name__
        if mode not in MODES:
            raise ValueError(f"{name}: mode must be one of {MODES}, got {mode!r}")
        if mode == "layer":
            shape = (1,)
        elif shape is not None:
            shape = (int(shape),) if np.ndim(shape) == 0 else tuple(int(n) for n in shape)
            if mode == "channel" and len(shape) != 1:
                raise ValueError(f"{name}: mode 'channel' takes the channel count, got {shape}")
        self.config = dict(mode=mode, shape=shape)
        # a zero-size placeholder until the first input fixes the shape
        initial = np.full(shape if shape is not None else (0,), self.FILL, np.dtype(dtype))
        setattr(self, self.PARAM, self.add_parameter(self.PARAM, initial))

    def _param_shape(self, x):
        return x.shape[1:] if self.config["mode"] == "element" else \
            (x.shape[1],) if self.config["mode"] == "channel" else (1,)

    def _materialize(self, x):
        param = self._params[self.PARAM]
        if self.config["shape"] is None and param.size == 0:
            shape = tuple(int(n) for n in self._param_shape(x))
            param._set(np.full(shape, self.FILL, self.dtype))
            self.config["shape"] = shape
            if self.device != "cpu":
                self.to(self.device)
        return param


class Shift(_ShiftScale):
    """``Shift(mode)``: y = x + b, b learnable (init 0)."""
    PARAM, FILL = "bias", 0.0

    def _forward(self, x, training):
        return F.shift_forward(x, self._materialize(x).data, self.config["mode"])

    def _backward(self, dy):
        dx, _ = F.shift_backward(dy, self.bias.data, self.config["mode"],
                                 out=(None, self.bias.grad))
        return dx


class Scale(_ShiftScale):
    """``Scale(mode)``: y = w ⊙ x, w learnable (init 1)."""
    PARAM, FILL = "weight", 1.0

    def _forward(self, x, training):
        self._x = x
        return F.scale_forward(x, self._materialize(x).data, self.config["mode"])

    def _backward(self, dy):
        dx, _ = F.scale_backward(dy, self._x, self.weight.data, self.config["mode"],
                                 out=(None, self.weight.grad))
        return dx
