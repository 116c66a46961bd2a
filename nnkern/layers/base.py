"""Layer and Parameter: thin stateful objects over the stateless kernels of nnkern.functional.

Conventions (API.md):
* ``forward(x, training=None)`` computes and keeps what ``backward`` needs; ``backward(dy)``
  returns dx and *overwrites* each parameter's ``.grad`` (gradients are not accumulated across
  backward calls, so no ``zero_grad`` is needed between steps — it only matters if one layer
  object appears twice in a model, which is not supported).
* ``training=None`` means the layer's mode, set by ``train()`` / ``eval()`` (default: training).
* dtype: a layer computes in the float dtype of its input. Its parameters, gradients and
  buffers are converted once when that dtype changes (float32 by default; float64 for gradient
  checks or PyTorch double-precision comparisons). Assigning float64 values to a parameter, or
  loading a float64 state dict, converts the whole layer likewise. Integer input is a TypeError.
* device: ``to("cuda")`` moves parameters, gradients and buffers; inputs must already be on the
  layer's device (no implicit copies).
"""

import numpy as np

from nnkern.backend import CPU, check_device, device_of_array, is_cuda_array, to_device

_REGISTRY = {}


def layer_class(name):
    """The Layer subclass registered under ``name`` (used by ``nnkern.load``)."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown layer type {name!r}; known: {sorted(_REGISTRY)}") from None


def _zeros_like(array):
    if isinstance(array, np.ndarray):
        return np.zeros_like(array)
    from nnkern.ops._cuda import zeros
    return zeros(array.shape, array.dtype)


def _astype(array, dtype):
    if isinstance(array, np.ndarray):
        return np.ascontiguousarray(array, dtype=dtype)
    return to_device(array.copy_to_host().astype(dtype), "cuda")


class Parameter:
    """A trainable array: ``.data`` (values), ``.grad`` (same shape), ``.name``.

    ``name`` is "weight"/"bias" (or "gamma"/"beta" for batch norm) inside a layer, prefixed by
    the layer's position in a model ("0.weight"). Assigning ``.data`` copies the new values into
    the parameter (same shape required); a different float dtype converts the owning layer.
    """

    __slots__ = ("_data", "grad", "name", "_owner")

    def __init__(self, data, name, owner=None):
        self._data = data
        self.grad = _zeros_like(data)
        self.name = name
        self._owner = owner

    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        if not (isinstance(value, np.ndarray) or is_cuda_array(value)):
            value = np.asarray(value)
        if tuple(value.shape) != tuple(self._data.shape):
            raise ValueError(f"parameter {self.name}: new data must have shape "
                             f"{tuple(self._data.shape)}, got {tuple(value.shape)}")
        dtype = np.dtype(value.dtype)
        if dtype.kind != "f":
            if dtype.kind not in "iub":
                raise TypeError(f"parameter {self.name}: expected real numbers, got {dtype}")
            dtype = np.dtype(self._data.dtype)
        elif dtype not in (np.float32, np.float64):
            dtype = np.dtype(np.float32)
        if dtype != self._data.dtype:
            if self._owner is not None:
                self._owner.astype(dtype)
            else:
                self._set(_astype(self._data, dtype))
        value = to_device(value, self.device)
        if isinstance(self._data, np.ndarray):
            np.copyto(self._data, value, casting="unsafe")
        else:
            self._data.copy_to_device(_astype(value, dtype))

    def _set(self, array):
        """Replace the storage (dtype or device change): the gradient follows."""
        self._data = array
        self.grad = _zeros_like(array)

    @property
    def shape(self):
        return tuple(self._data.shape)

    @property
    def dtype(self):
        return np.dtype(self._data.dtype)

    @property
    def device(self):
        return device_of_array(self._data)

    @property
    def size(self):
        return int(np.prod(self.shape, dtype=np.int64))

    def __repr__(self):
        return f"Parameter(name={self.name!r}, shape={self.shape}, dtype={self.dtype})"


class Layer:
    """Base class. Subclasses call ``add_parameter``/``add_buffer`` in ``__init__``, store their
    constructor arguments in ``self.config`` (for save/load), and implement ``_forward(x,
    training)``, ``_backward(dy)`` and ``output_shape(input_shape)``."""

    #: PyTorch's state-dict name of each parameter/buffer, where it differs from ours.
    STATE_NAMES = {}
    #: Set False by Sequential for the first layer: its input gradient is not needed, and
    #: layers that can skip computing it (dense, conv) return None from backward.
    needs_input_grad = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        _REGISTRY[cls.__name__] = cls

    def __init__(self):
        self._params = {}
        self._buffers = {}
        self.config = {}
        self.training = True
        self.device = CPU
        self._dtype = np.dtype(np.float32)
        self._has_forward = False
        #: What a layer's fast path may skip checking: set by the layer after a call that went
        #: through the validating functional op, reset when the device or dtype changes.
        self._checked = None

    @property
    def dtype(self):
        """The float dtype of the layer's parameters and buffers (float32 by default)."""
        return self._dtype

    # -- construction helpers ---------------------------------------------------------------
    def add_parameter(self, name, array):
        param = Parameter(np.ascontiguousarray(array), name, owner=self)
        self._params[name] = param
        self._dtype = param.dtype
        return param

    def add_buffer(self, name, array):
        self._buffers[name] = array
        return array

    def buffer(self, name):
        return self._buffers[name]

    def _set_buffer(self, name, value):
        """Assign new values to a buffer (its shape is fixed; its dtype and device are kept)."""
        old = self._buffers[name]
        if tuple(np.shape(value)) != tuple(old.shape):
            raise ValueError(f"{type(self).__name__}: buffer {name} must have shape "
                             f"{tuple(old.shape)}, got {tuple(np.shape(value))}")
        value = np.ascontiguousarray(value, dtype=old.dtype)
        self._buffers[name] = to_device(value, self.device)

    # -- the public interface ---------------------------------------------------------------
    def forward(self, x, training=None):
        x = self._prepare_input(x)
        training = self.training if training is None else bool(training)
        y = self._forward(x, training)
        self._has_forward = True
        return y

    __call__ = forward

    def backward(self, dy):
        if not self._has_forward:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return self._backward(self._prepare_grad(dy))

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_parameters(self, prefix=""):
        return [(prefix + name, p) for name, p in self._params.items()]

    def named_buffers(self, prefix=""):
        return [(prefix + name, b) for name, b in self._buffers.items()]

    def train(self, mode=True):
        self.training = bool(mode)
        return self

    def eval(self):
        return self.train(False)

    def to(self, device=None, dtype=None):
        """Move parameters, gradients and buffers to ``device`` and/or convert to ``dtype``."""
        if dtype is not None:
            self.astype(dtype)
        if device is not None:
            device = check_device(device)
            self._checked = None
            for p in self._params.values():
                p._set(to_device(p.data, device))
            for name, b in self._buffers.items():
                self._buffers[name] = to_device(b, device)
            self.device = device
        return self

    def astype(self, dtype):
        """Convert parameters, gradients and buffers to float32 or float64."""
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"{type(self).__name__}: dtype must be float32 or float64, "
                            f"got {dtype}")
        for p in self._params.values():
            if p.dtype != dtype:
                p._set(_astype(p.data, dtype))
        for name, b in self._buffers.items():
            if np.dtype(b.dtype).kind == "f" and b.dtype != dtype:
                self._buffers[name] = _astype(b, dtype)
        self._dtype = dtype
        self._checked = None
        return self

    def state_dict(self, prefix=""):
        """{PyTorch-style key: numpy array} of parameters and buffers."""
        state = {}
        for name, p in self._params.items():
            state[prefix + self.STATE_NAMES.get(name, name)] = _host_copy(p.data)
        for name, b in self._buffers.items():
            state[prefix + self.STATE_NAMES.get(name, name)] = _host_copy(b)
        return state

    def load_state_dict(self, state, strict=True):
        """Load values saved by ``state_dict`` (or a PyTorch module's, converted to numpy)."""
        _load_state(self, dict(state), strict)
        return self

    def output_shape(self, input_shape):
        """The output shape for an input of ``input_shape`` (default: unchanged)."""
        return tuple(input_shape)

    def get_config(self):
        return dict(self.config)

    def extra_repr(self):
        return ", ".join(f"{k}={v!r}" for k, v in self.config.items())

    def __repr__(self):
        return f"{type(self).__name__}({self.extra_repr()})"

    # -- helpers for subclasses ----------------------------------------------------------------
    def _prepare_input(self, x):
        """Check the input's device and dtype; follow its float dtype (see the module doc)."""
        if type(x) is np.ndarray and x.dtype == self._dtype and self.device == CPU \
                and x.flags.c_contiguous:
            return x  # the common case, in a few hundred nanoseconds
        x = self._as_array(x, "x")
        if self._params or any(np.dtype(b.dtype).kind == "f" for b in self._buffers.values()):
            if x.dtype != self.dtype:
                self.astype(x.dtype)
        return x

    def _prepare_grad(self, dy):
        if type(dy) is np.ndarray and dy.dtype == self._dtype and self.device == CPU \
                and dy.flags.c_contiguous:
            return dy
        dy = self._as_array(dy, "dy")
        if self._params and dy.dtype != self.dtype:
            raise TypeError(f"{type(self).__name__}.backward: dy has dtype {dy.dtype} but the "
                            f"forward ran in {self.dtype}")
        return dy

    def _as_array(self, x, what):
        if isinstance(x, np.ndarray):
            if self.device != CPU:
                raise ValueError(f"{type(self).__name__}: {what} is a numpy array but the layer "
                                 f"lives on {self.device}; move it with "
                                 f"nnkern.to_device({what}, '{self.device}')")
            if x.dtype.kind != "f" or x.dtype not in (np.float32, np.float64):
                raise TypeError(f"{type(self).__name__}: {what} must be float32 or float64, "
                                f"got {x.dtype}")
            return x if x.flags.c_contiguous else np.ascontiguousarray(x)
        if is_cuda_array(x):
            if self.device == CPU:
                raise ValueError(f"{type(self).__name__}: {what} is a CUDA array but the layer "
                                 f"lives on cpu; call .to('cuda') on the layer or model")
            return x
        raise TypeError(f"{type(self).__name__}: {what} must be a numpy array or a CUDA array, "
                        f"got {type(x).__name__}")


def _host_copy(array):
    if isinstance(array, np.ndarray):
        return array.copy()
    return array.copy_to_host()


def _load_state(layer, state, strict):
    """Assign each parameter/buffer of ``layer`` from ``state`` (keys without prefix)."""
    expected = {}
    for name in list(layer._params) + list(layer._buffers):
        expected[layer.STATE_NAMES.get(name, name)] = name
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected and not k.endswith("num_batches_tracked")]
    if strict and (missing or unexpected):
        raise KeyError(f"{type(layer).__name__}.load_state_dict: missing keys {missing}, "
                       f"unexpected keys {unexpected}")
    values = {expected[k]: np.asarray(_host_copy(v) if is_cuda_array(v) else v)
              for k, v in state.items() if k in expected}
    floats = {np.dtype(v.dtype) for v in values.values() if np.dtype(v.dtype).kind == "f"}
    if len(floats) == 1 and layer._params:
        layer.astype(floats.pop())  # a float64 state dict makes a float64 layer
    for name, value in values.items():
        if name in layer._params:
            layer._params[name].data = value
        else:
            layer._set_buffer(name, value)

