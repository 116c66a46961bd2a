"""Sequential models, and saving/loading any layer or model to one file.

A saved file is a NumPy ``.npz`` archive (no pickle): one array per state-dict entry, plus a
JSON description of the architecture (layer types and constructor arguments). Writing goes to a
temporary file in the same directory that is then renamed over the target, so a crash never
leaves a half-written file.
"""

import json
import math
import os
import tempfile

import numpy as np

from nnkern.backend import CPU, check_device
from nnkern.layers._common import cpu_backend, fusion
from nnkern.layers.base import Layer, layer_class
from nnkern.runtime import serial_blas

FORMAT = "nnkern-model"
FORMAT_VERSION = 1


class Sequential(Layer):
    """``Sequential(*layers)``: forward runs the layers in order, backward in reverse.

    Parameter names and state-dict keys are prefixed by the layer's index ("0.weight",
    "1.running_mean", ...), as in ``torch.nn.Sequential``.
    """

    def __init__(self, *layers):
        super().__init__()
        self.layers = []
        for layer in layers:
            self.append(layer)

    def append(self, layer):
        if not isinstance(layer, Layer):
            raise TypeError(f"Sequential: expected Layer instances, got {type(layer).__name__}")
        layer.train(self.training)
        self.layers.append(layer)
        for name, p in self.named_parameters():
            p.name = name
        return self

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __getitem__(self, index):
        return self.layers[index]

    # -- forward / backward --------------------------------------------------------------------
    #: Run Dense -> ReLU and BatchNorm1D/2D -> ReLU as fused steps on the CPU (one pass over
    #: the output each way instead of two or three; the same values), and Dense ->
    #: BatchNorm1D (-> ReLU) as one jitted call each way (the same values up to rounding). Set
    #: False on a model (or the class) to run every layer on its own.
    fuse = True

    def _steps(self):
        """The layers grouped into steps: fused pairs where ``fuse`` allows, else one layer
        each. Rebuilt when the layer list changes."""
        key = (self.fuse, *map(id, self.layers))
        if getattr(self, "_steps_key", None) != key:
            self._step_list = _plan(self.layers, self.fuse)
            self._steps_key = key
        return self._step_list

    def forward(self, x, training=None):
        training = self.training if training is None else bool(training)
        steps = self._steps()
        with serial_blas():  # one flip of the BLAS thread count for all layers (see runtime)
            for step in steps:
                x = step.forward(x, training)
        self._ran = steps
        self._has_forward = True
        return x

    __call__ = forward

    def backward(self, dy, need_input_grad=True):
        """Backpropagate ``dy`` (the loss gradient w.r.t. the output) through every layer,
        writing each parameter's ``.grad``; returns the gradient w.r.t. the model's input, or
        None when ``need_input_grad`` is False (skips the first layer's input gradient)."""
        if not self._has_forward:
            raise RuntimeError("Sequential.backward called before forward")
        steps = self._ran
        # A step needs its input gradient if the model's input needs one or a step before it
        # has parameters: layers in front of the first trainable one (an MLP's Flatten) get
        # none, so that one skips its dx (e.g. a 64x100 @ 100x784 GEMM), as torch does.
        needed = need_input_grad
        flags = []
        for step in steps:
            flags.append(needed)
            needed = needed or step.trainable
        with serial_blas():
            for i in range(len(steps) - 1, -1, -1):
                step = steps[i]
                if not flags[i] and not step.trainable:
                    return None  # nothing below this step needs a gradient
                step.first.needs_input_grad = flags[i]
                dy = step.backward(dy)
                if dy is None:
                    break
        return dy if need_input_grad else None

    # -- state, mode, device -------------------------------------------------------------------
    def named_parameters(self, prefix=""):
        return [item for i, layer in enumerate(self.layers)
                for item in layer.named_parameters(f"{prefix}{i}.")]

    def named_buffers(self, prefix=""):
        return [item for i, layer in enumerate(self.layers)
                for item in layer.named_buffers(f"{prefix}{i}.")]

    def train(self, mode=True):
        self.training = bool(mode)
        for layer in self.layers:
            layer.train(mode)
        return self

    def to(self, device=None, dtype=None):
        for layer in self.layers:
            layer.to(device, dtype)
        if device is not None:
            self.device = check_device(device)
        return self

    @property
    def dtype(self):
        """The dtype of the first parameter (layers follow their input's dtype together)."""
        for layer in self.layers:
            if layer.parameters():
                return layer.dtype
        return np.dtype(np.float32)

    def astype(self, dtype):
        return self.to(dtype=dtype)

    def state_dict(self, prefix=""):
        state = {}
        for i, layer in enumerate(self.layers):
            state.update(layer.state_dict(f"{prefix}{i}."))
        return state

    def load_state_dict(self, state, strict=True):
        """Load a state dict with PyTorch-style keys ("0.weight", ...). PyTorch's
        ``num_batches_tracked`` entries are accepted (they set the counter) or may be absent."""
        parts = [{} for _ in self.layers]
        unexpected = []
        for key, value in dict(state).items():
            index, _, rest = key.partition(".")
            if index.isdigit() and int(index) < len(self.layers) and rest:
                parts[int(index)][rest] = value
            else:
                unexpected.append(key)
        if strict and unexpected:
            raise KeyError(f"Sequential.load_state_dict: unexpected keys {unexpected}")
        for i, (layer, part) in enumerate(zip(self.layers, parts)):
            try:
                layer.load_state_dict(part, strict)
            except KeyError as e:
                raise KeyError(f"layer {i} ({type(layer).__name__}): {e.args[0]}") from None
        return self

    def output_shape(self, input_shape):
        for layer in self.layers:
            input_shape = layer.output_shape(input_shape)
        return input_shape

    def summary(self, input_shape=None, print_fn=print):
        """Print (and return) a table of layers, output shapes and parameter counts.

        ``input_shape`` is the shape of one input batch, e.g. (64, 3, 32, 32); without it the
        output shapes are left out.
        """
        rows = [("#", "layer", "output shape", "params")]
        shape = None if input_shape is None else tuple(input_shape)
        for i, layer in enumerate(self.layers):
            if shape is not None:
                shape = layer.output_shape(shape)
            count = sum(p.size for p in layer.parameters())
            rows.append((str(i), repr(layer), "?" if shape is None else str(shape), f"{count:,}"))
        total = sum(p.size for p in self.parameters())
        widths = [max(len(r[k]) for r in rows) for k in range(4)]
        line = "-" * (sum(widths) + 6)
        text = [line]
        for j, r in enumerate(rows):
            text.append("  ".join((r[0].rjust(widths[0]), r[1].ljust(widths[1]),
                                   r[2].ljust(widths[2]), r[3].rjust(widths[3]))))
            if j == 0:
                text.append(line)
        text += [line, f"total parameters: {total:,}"]
        text = "\n".join(text)
        if print_fn is not None:
            print_fn(text)
        return text

    def get_config(self):
        return {"layers": [describe(layer) for layer in self.layers]}

    def save(self, path):
        save(self, path)

    def extra_repr(self):
        return "\n" + "\n".join(f"  ({i}): {layer!r}" for i, layer in enumerate(self.layers)) \
            + "\n"


class _Single:
    """A step of one layer. ``trainable``: it has parameters (checked when the step list is
    built)."""
    __slots__ = ("first", "index", "forward", "backward", "trainable")

    def __init__(self, layer, index):
        self.first, self.index = layer, index
        self.forward, self.backward = layer.forward, layer.backward
        self.trainable = bool(layer.parameters())


class _Fused:
    """Layer ``first`` followed by a ReLU, run by ``first``'s fused kernels when both layers
    are on the CPU and have validated this input shape once (the first call runs them one by
    one, through the checking ops). Each layer is left in the state its own forward would
    leave: the ReLU keeps its output as both its input and output (x > 0 exactly where
    relu(x) > 0, so its own backward still works), the first layer its input and statistics.
    """
    __slots__ = ("first", "relu", "index", "fused", "trainable")

    def __init__(self, first, relu, index):
        self.first, self.relu, self.index = first, relu, index
        self.fused = False
        self.trainable = bool(first.parameters())

    def forward(self, x, training):
        first, relu = self.first, self.relu
        x = first._prepare_input(x)
        if relu._checked is not None and first._fast(x) and relu.device == CPU and fusion():
            y = self._fused_forward(x, training)
            first._has_forward = relu._has_forward = True
            relu._x = relu._y = y
            self.fused = True
            return y
        self.fused = False
        return relu.forward(first.forward(x, training), training)

    def backward(self, dy):
        if not self.fused:
            return self.first.backward(self.relu.backward(dy))
        return self._fused_backward(self.relu._prepare_grad(dy))


class _DenseReLU(_Fused):
    __slots__ = ()

    def _fused_forward(self, x, training):
        return self.first._forward_relu(x)

    def _fused_backward(self, dy):
        return self.first._dense_backward(dy, self.first._relu_y)


class _BatchNormReLU(_Fused):
    __slots__ = ()

    def _fused_forward(self, x, training):
        return self.first._bn_forward(x, training, True)

    def _fused_backward(self, dy):
        return self.first._bn_backward(dy, True)


class _DenseBatchNorm:
    """Dense -> BatchNorm1D, or Dense -> BatchNorm1D -> ReLU, as one step: one jitted call each
    way (``nnkern.ops.dense_batch_norm``) when every layer is on the CPU and has validated this
    input shape once; the values of the layers one by one, up to rounding. Otherwise (the first
    call, other devices or dtypes, the reference backend) the Dense runs on its own and ``rest``
    (the batch norm, fused with the ReLU where it can be) after it. Each layer is left in the
    state its own forward would leave (see _Fused)."""
    __slots__ = ("first", "norm", "relu", "rest", "index", "fused", "trainable", "zb")

    def __init__(self, dense, norm, relu, index):
        self.first, self.norm, self.relu, self.index = dense, norm, relu, index
        self.rest = _Single(norm, index + 1) if relu is None \
            else _BatchNormReLU(norm, relu, index + 1)
        self.fused = False
        self.trainable = True
        self.zb = None  # the fused forward's z, in its blocks (ops/dense_batch_norm/cpu.py)

    def _fusable(self, x, training):
        dense, norm, relu = self.first, self.norm, self.relu
        return dense._fast(x) and norm._checked == (dense.config["out_features"],) \
            and norm._dtype == x.dtype and norm.device == CPU \
            and (relu is None or (relu._checked is not None and relu.device == CPU)) \
            and (x.shape[0] > 1 or not norm._uses_batch_stats(training)) \
            and fusion() and cpu_backend("dense_batch_norm").AVAILABLE

    def forward(self, x, training):
        dense, norm, relu = self.first, self.norm, self.relu
        x = dense._prepare_input(x)
        if not self._fusable(x, training):
            self.fused = False
            return self.rest.forward(dense.forward(x, training), training)
        use_batch_stats, momentum, *running = norm._step_args(training)
        gamma, beta = norm._affine()
        bias = dense.bias
        ops = cpu_backend("dense_batch_norm")
        weight = dense.weight.data
        self.zb, y, mean, inv_std, coef = ops.forward(
            x, weight, None if bias is None else bias.data, gamma, beta, *running,
            use_batch_stats, momentum, norm.config["eps"], relu is not None)
        dense._x = x
        zb, (n, i), o = self.zb, x.shape, weight.shape[0]
        norm._remember(None, use_batch_stats, mean, inv_std, coef,
                       lambda: ops.z_from_blocks(zb, n, i, o))
        dense._has_forward = norm._has_forward = True
        if relu is not None:
            relu._x = relu._y = y
            relu._has_forward = True
        self.fused = True
        return y

    def backward(self, dy):
        dense, norm, relu = self.first, self.norm, self.relu
        if not self.fused:
            return dense.backward(self.rest.backward(dy))
        dy = (norm if relu is None else relu)._prepare_grad(dy)
        x, zb = dense._x, self.zb
        if not (type(dy) is np.ndarray and dy.shape == (x.shape[0], dense.config["out_features"])
                and dy.dtype == zb.dtype):
            # the layers' own backwards, which check dy and say what is wrong with it
            dy = dy if relu is None else relu.backward(dy)
            return dense.backward(norm.backward(dy))
        gamma, _ = norm._affine()
        bias = dense.bias
        out = (None, dense.weight.grad, None if bias is None else bias.grad,
               None if norm.gamma is None else norm.gamma.grad,
               None if norm.beta is None else norm.beta.grad)
        dx, *_ = cpu_backend("dense_batch_norm").backward(
            dy, x, dense.weight.data, zb, gamma, norm._mean, norm._inv_std, norm._coef,
            norm._batch_stats, relu is not None, has_bias=bias is not None,
            need_dx=dense.needs_input_grad, out=out)
        return dx


def _plan(layers, fuse):
    from nnkern.layers.activation import ReLU
    from nnkern.layers.dense import Dense
    from nnkern.layers.normalization import BatchNorm1D, BatchNorm2D
    pairs = {Dense: _DenseReLU, BatchNorm1D: _BatchNormReLU, BatchNorm2D: _BatchNormReLU}
    steps, i = [], 0
    while i < len(layers):
        layer = layers[i]
        fused = pairs.get(type(layer)) if fuse else None
        if fuse and type(layer) is Dense and i + 1 < len(layers) \
                and type(layers[i + 1]) is BatchNorm1D:
            relu = layers[i + 2] if i + 2 < len(layers) and type(layers[i + 2]) is ReLU \
                else None
            steps.append(_DenseBatchNorm(layer, layers[i + 1], relu, i))
            i += 2 if relu is None else 3
        elif fused is not None and i + 1 < len(layers) and type(layers[i + 1]) is ReLU:
            steps.append(fused(layer, layers[i + 1], i))
            i += 2
        else:
            steps.append(_Single(layer, i))
            i += 1
    return steps


def describe(layer):
    """JSON-able description of a layer's architecture: {"type": ..., "config": ...}."""
    return {"type": type(layer).__name__, "config": _jsonable(layer.get_config())}


def build(description):
    """Rebuild a layer (or Sequential) from ``describe``'s output."""
    cls = layer_class(description["type"])
    config = description["config"]
    if cls is Sequential or issubclass(cls, Sequential):
        return cls(*(build(d) for d in config["layers"]))
    return cls(**config)


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"cannot save a non-finite config value {value!r}")
    return value


def save(layer, path):
    """Write ``layer``'s architecture, parameters and buffers to ``path`` (one .npz file)."""
    header = {"format": FORMAT, "version": FORMAT_VERSION, "architecture": describe(layer),
              "dtype": str(np.dtype(layer.dtype))}
    arrays = {f"state/{k}": v for k, v in layer.state_dict().items()}
    arrays["__header__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load(path):
    """Load a layer or model saved with ``save``/``Sequential.save`` (on the CPU)."""
    with np.load(path, allow_pickle=False) as archive:
        if "__header__" not in archive.files:
            raise ValueError(f"{path}: not an nnkern model file (no header)")
        header = json.loads(archive["__header__"].tobytes().decode())
        if header.get("format") != FORMAT:
            raise ValueError(f"{path}: not an nnkern model file (format {header.get('format')!r})")
        if header.get("version", 0) > FORMAT_VERSION:
            raise ValueError(f"{path}: saved by a newer nnkern (format version "
                             f"{header['version']} > {FORMAT_VERSION})")
        state = {k[len("state/"):]: archive[k] for k in archive.files if k.startswith("state/")}
    layer = build(header["architecture"])
    layer.astype(header.get("dtype", "float32"))
    layer.load_state_dict(state)
    return layer


def atomic_write(path, write):
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it into place."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
