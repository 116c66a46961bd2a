"""The optimizer base class: parameter groups, lazy state, regularizers, state dicts.

An optimizer holds ``param_groups``, a list of dicts ``{"params": [Parameter, ...], "lr_mult":
1.0, <every hyperparameter of the rule>}``; ``optimizer.lr`` is the base learning rate (what a
schedule changes) and a group's parameters move with ``optimizer.lr * group["lr_mult"]``. A
group dict may override any hyperparameter (``{"params": biases, "lr_mult": 2.0,
"weight_decay": 0.0}``); keys are validated when the optimizer is built, and again at the next
``step()`` after a group's values were changed.

State (momentum buffers, moments, ...) lives in ``optimizer.state[param]`` and is allocated at a
parameter's first step with the shape, dtype and device the parameter has then, so a parameter
that is still zero-sized when the optimizer is built (lazily sized Shift/Scale layers) works.
Zero-sized parameters are skipped. When a parameter's dtype or device changes, its state
follows; when its shape changes, its state starts afresh.

Devices: each parameter's step runs the update kernels of the device its data lives on
(``nnkern.ops.update.cpu`` or ``.cuda``, looked up once when the state is bound), with its state
arrays on that device: a CUDA parameter is updated by one fused kernel launch per step, and its
state never leaves the GPU. ``state_dict()`` returns host numpy arrays whatever the device;
``load_state_dict()`` puts each state array on its parameter's current device and dtype, so a
state saved from a CPU optimizer resumes a CUDA one and vice versa.

Gradients are overwritten by each backward pass (never accumulated), so every parameter is
updated at every step and ``zero_grad()`` is only needed by code that accumulates by hand.
"""

import math
import numbers

import numpy as np

from nnkern import _validate as v
from nnkern.backend import CPU, CUDA, as_cuda_array, device_of_array, to_device
from nnkern.layers.base import Parameter
from nnkern.ops._dispatch import impl

_OPS = "nnkern.ops.update"


class _State:
    """Per-parameter state: step count, the rule's state arrays (flat, in ``STATE`` order, None
    until needed) and cached flat views of the parameter and gradient storage."""

    __slots__ = ("step", "bufs", "shape", "data", "grad", "p", "g", "backend", "dtype", "device")

    def __init__(self, shape, count):
        self.step = 0
        self.bufs = [None] * count
        self.shape = shape
        self.data = self.grad = self.p = self.g = self.backend = None
        self.dtype = self.device = None


def _flat(a, device=CPU):
    """A flat view of ``a``; CUDA arrays as Numba device arrays (CuPy/PyTorch tensors are
    wrapped once here, not at every step)."""
    if device == CUDA:
        a = as_cuda_array(a)
        return a.reshape(a.size)
    return a.reshape(-1)


def _cuda():
    from nnkern.ops import _cuda  # imported on first use: ``import nnkern`` needs no GPU stack
    return _cuda


def _convert(a, dtype, device):
    """``a`` with ``dtype`` on ``device`` (a state array following its parameter)."""
    if isinstance(a, np.ndarray) and a.dtype == dtype:
        return to_device(a, device)
    host = a if isinstance(a, np.ndarray) else a.copy_to_host()
    return to_device(host.astype(dtype, copy=False), device)


def _host(a):
    return a.copy() if isinstance(a, np.ndarray) else a.copy_to_host()


class Optimizer:
    """Base class. Subclasses define ``STATE`` (names of the per-parameter state arrays, as in
    torch.optim's state dicts), ``HYPER`` (hyperparameter names in order), ``_check(h, where)``
    (validate one group's values) and ``_update(st, lr, h)`` (one parameter's step)."""

    STATE = ()
    HYPER = ()
    #: hyperparameters every optimizer has: coupled L2 and L1 penalties, max-norm constraint
    REGULARIZERS = ("weight_decay", "l1", "max_norm")

    def __init__(self, params, lr, defaults, *, clip_norm=None):
        name = type(self).__name__
        self._lr = v.check_float(name, "lr", lr, 0.0)
        self.clip_norm = None if clip_norm is None else \
            v.check_float(name, "clip_norm", clip_norm, 0.0, None, True)
        self._keys = ("lr_mult",) + tuple(self.HYPER) + self.REGULARIZERS
        self.defaults = dict(lr_mult=1.0, **defaults)
        self.defaults = self._validated(self.defaults, name)
        self.param_groups = []
        self.state = {}
        self._cache = []  # per group: (group dict, its values tuple, validated namespace)
        groups = self._as_groups(params)
        for group in groups:
            self.add_param_group(group)
        if not any(group["params"] for group in self.param_groups):
            raise ValueError(f"{name}: got an empty parameter list")

    # -- construction ----------------------------------------------------------------------------
    def _as_groups(self, params):
        name = type(self).__name__
        if isinstance(params, (Parameter, dict)) or not hasattr(params, "__iter__"):
            raise TypeError(f"{name}: params must be an iterable of Parameters or of parameter-"
                            f"group dicts (e.g. model.parameters()), got {type(params).__name__}")
        items = list(params)
        if all(isinstance(item, dict) for item in items) and items:
            return items
        for item in items:
            if not isinstance(item, Parameter):
                hint = " (mixed with Parameters)" if isinstance(item, dict) else \
                    "; pass model.parameters()" if hasattr(item, "parameters") else ""
                raise TypeError(f"{name}: params must contain Parameters or parameter-group "
                                f"dicts, got {type(item).__name__}{hint}")
        return [{"params": items}]

    def add_param_group(self, group):
        """Add a group ``{"params": [...], "lr_mult": ..., <hyperparameter overrides>}``."""
        name = type(self).__name__
        where = f"{name} param group {len(self.param_groups)}"
        if not isinstance(group, dict):
            raise TypeError(f"{where}: expected a dict, got {type(group).__name__}")
        if "params" not in group:
            raise ValueError(f"{where}: missing the 'params' key")
        unknown = [k for k in group if k != "params" and k not in self._keys]
        if unknown:
            hint = " (the learning rate is optimizer.lr times the group's 'lr_mult')" \
                if "lr" in unknown else ""
            raise ValueError(f"{where}: unknown keys {unknown}{hint}; allowed: "
                             f"{['params', *self._keys]}")
        params = group["params"]
        if isinstance(params, Parameter):
            params = [params]
        elif isinstance(params, dict) or not hasattr(params, "__iter__"):
            raise TypeError(f"{where}: 'params' must be an iterable of Parameters, got "
                            f"{type(params).__name__}")
        params = list(params)
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        for p in params:
            if not isinstance(p, Parameter):
                raise TypeError(f"{where}: 'params' must contain Parameters, got "
                                f"{type(p).__name__}")
            if id(p) in seen:
                raise ValueError(f"{where}: parameter {p.name!r} appears more than once "
                                 "(in this group or another one)")
            seen.add(id(p))
        values = dict(self.defaults)
        values.update((k, group[k]) for k in group if k != "params")
        new = {"params": params, **self._validated(values, where)}
        self.param_groups.append(new)
        self._cache.append(None)

    def _validated(self, values, where):
        """Check and normalise one group's hyperparameters; returns a new dict."""
        out = dict(values)
        out["lr_mult"] = v.check_float(where, "lr_mult", out["lr_mult"], 0.0)
        out["weight_decay"] = v.check_float(where, "weight_decay", out["weight_decay"], 0.0)
        out["l1"] = v.check_float(where, "l1", out["l1"], 0.0)
        if out["max_norm"] is not None:
            out["max_norm"] = v.check_float(where, "max_norm", out["max_norm"], 0.0, None, True)
        self._check(out, where)
        return out

    def _check(self, h, where):
        raise NotImplementedError

    # -- the learning rate -----------------------------------------------------------------------
    @property
    def lr(self):
        """The base learning rate (each group uses lr * group["lr_mult"])."""
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = v.check_float(type(self).__name__, "lr", value, 0.0)

    # -- stepping --------------------------------------------------------------------------------
    def _hyper(self, index, group):
        """The validated hyperparameters of group ``index`` as attributes (cached until the
        group's values change)."""
        values = tuple(map(group.get, self._keys))
        cached = self._cache[index]
        if cached is not None and cached[0] is group and cached[1] == values:
            return cached[2]
        where = f"{type(self).__name__} param group {index}"
        missing = [k for k in self._keys if k not in group]
        if missing:
            raise ValueError(f"{where}: missing keys {missing}")
        h = _Hyper(self._validated({k: group[k] for k in self._keys}, where))
        self._cache[index] = (group, values, h)
        return h

    def step(self):
        """One update of every parameter from its current ``.grad``."""
        if self.clip_norm is not None:
            clip_grad_norm(self._all_params(), self.clip_norm)
        base_lr = self._lr
        state = self.state
        for index, group in enumerate(self.param_groups):
            h = self._hyper(index, group)
            lr = base_lr * h.lr_mult
            for p in group["params"]:
                st = state.get(p)
                if st is None or st.data is not p.data or st.grad is not p.grad:
                    st = self._sync(p, st)
                    if st is None:
                        continue
                st.step += 1
                self._update(st, lr, h)
            if h.max_norm is not None:
                for p in group["params"]:
                    st = state.get(p)
                    if st is not None and len(st.shape) >= 2:
                        st.backend.max_norm_update(p.data, h.max_norm)

    def _sync(self, p, st):
        """(Re)bind the state of ``p`` to its current storage; None while ``p`` is zero-sized."""
        data, grad = p.data, p.grad
        shape = tuple(data.shape)
        if 0 in shape:
            return None
        name = f"{type(self).__name__}: parameter {p.name!r}"
        dtype = np.dtype(data.dtype)
        if dtype not in v.FLOAT_DTYPES:
            raise TypeError(f"{name} must be float32 or float64, got {dtype}")
        if grad is None or tuple(grad.shape) != shape or np.dtype(grad.dtype) != dtype:
            got = "None" if grad is None else f"shape {tuple(grad.shape)} dtype {grad.dtype}"
            raise ValueError(f"{name}: its .grad must have shape {shape} and dtype {dtype}, "
                             f"got {got}")
        for what, a in (("data", data), ("grad", grad)):
            if not v._is_c_contiguous(a):
                raise ValueError(f"{name}: .{what} must be C-contiguous")
        device = device_of_array(data)
        if device_of_array(grad) != device:
            raise ValueError(f"{name}: .data and .grad live on different devices")
        if st is None or st.shape != shape:
            st = _State(shape, len(self.STATE))
            self.state[p] = st
        elif st.dtype != dtype or st.device != device:
            st.bufs = [None if b is None else _convert(b, dtype, device) for b in st.bufs]
        st.data, st.grad = data, grad
        st.p, st.g = _flat(data, device), _flat(grad, device)
        st.dtype, st.device = dtype, device
        st.backend = impl(_OPS, device)
        return st

    def _buffer(self, st, k, fill=0.0):
        """State array ``k`` of ``st``, allocated (filled with ``fill``) when missing; returns
        (array, newly_allocated)."""
        b = st.bufs[k]
        if b is not None:
            return b, False
        if st.device == CPU:
            b = np.full(st.p.size, fill, st.dtype)
        else:  # allocated and filled on the GPU (fill is cast to the dtype there)
            b = _cuda().fill(_cuda().empty((st.p.size,), st.dtype), fill)
        st.bufs[k] = b
        return b, True

    def _update(self, st, lr, h):
        raise NotImplementedError

    def _all_params(self):
        return [p for group in self.param_groups for p in group["params"]]

    def zero_grad(self):
        """Fill every parameter's gradient with zeros."""
        for p in self._all_params():
            if p.grad is not None and 0 not in tuple(p.grad.shape):
                if isinstance(p.grad, np.ndarray):
                    p.grad[...] = 0
                else:  # one kernel, no host round trip
                    _cuda().fill(as_cuda_array(p.grad), 0)

    # -- state dicts -----------------------------------------------------------------------------
    def state_dict(self):
        """{"type", "lr", "clip_norm", "param_groups": [group values, "params" as indices],
        "state": {index: {"step": int, <state name>: numpy array of the parameter's shape}}}:
        numpy arrays and plain Python values; parameters are numbered in group order."""
        groups, state, index = [], {}, 0
        for group in self.param_groups:
            entry = {k: (list(val) if isinstance(val, tuple) else val)
                     for k, val in group.items() if k != "params"}
            entry["params"] = list(range(index, index + len(group["params"])))
            groups.append(entry)
            for p in group["params"]:
                st = self.state.get(p)
                if st is not None:
                    item = {"step": st.step}
                    for name, b in zip(self.STATE, st.bufs):
                        if b is not None:
                            item[name] = _host(b).reshape(st.shape)
                    state[index] = item
                index += 1
        return {"type": type(self).__name__, "lr": self._lr, "clip_norm": self.clip_norm,
                "param_groups": groups, "state": state}

    def load_state_dict(self, state_dict):
        """Restore what ``state_dict`` saved; the optimizer must have been built over the same
        parameters (same group sizes, same order). Continues bit-identically."""
        name = type(self).__name__
        sd = dict(state_dict)
        if sd.get("type", name) != name:
            raise ValueError(f"{name}.load_state_dict: the state is of a {sd['type']}")
        groups = sd.get("param_groups")
        if not isinstance(groups, (list, tuple)) or len(groups) != len(self.param_groups):
            got = len(groups) if isinstance(groups, (list, tuple)) else groups
            raise ValueError(f"{name}.load_state_dict: the state has {got} parameter groups, "
                             f"the optimizer {len(self.param_groups)}")
        params = []
        new_groups = []
        for i, (saved, group) in enumerate(zip(groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"{name}.load_state_dict: group {i} has "
                                 f"{len(saved['params'])} parameters in the state, "
                                 f"{len(group['params'])} in the optimizer")
            values = {k: (tuple(val) if isinstance(val, list) else val)
                      for k, val in saved.items() if k != "params"}
            unknown = [k for k in values if k not in self._keys]
            if unknown:
                raise ValueError(f"{name}.load_state_dict: group {i} has unknown keys {unknown}")
            merged = {k: group[k] for k in self._keys}
            merged.update(values)
            new_groups.append(self._validated(merged, f"{name}.load_state_dict group {i}"))
            params.extend(group["params"])
        states = {}
        for key, item in dict(sd.get("state", {})).items():
            index = int(key)
            if not 0 <= index < len(params):
                raise ValueError(f"{name}.load_state_dict: state for parameter {index}, but "
                                 f"there are {len(params)}")
            p = params[index]
            item = dict(item)
            unknown = [k for k in item if k != "step" and k not in self.STATE]
            if unknown:
                raise ValueError(f"{name}.load_state_dict: parameter {index} has unknown state "
                                 f"{unknown}; expected {list(self.STATE)}")
            arrays = {k: np.asarray(val) for k, val in item.items() if k != "step"}
            shapes = {tuple(a.shape) for a in arrays.values()}
            if len(shapes) > 1:
                raise ValueError(f"{name}.load_state_dict: parameter {index} has state arrays "
                                 f"of different shapes {sorted(shapes)}")
            shape = shapes.pop() if shapes else tuple(p.shape)
            if 0 not in tuple(p.shape) and shape != tuple(p.shape):
                raise ValueError(f"{name}.load_state_dict: parameter {index} ({p.name!r}) has "
                                 f"shape {tuple(p.shape)} but its state has shape {shape}")
            st = _State(shape, len(self.STATE))
            st.step = v.check_int(f"{name}.load_state_dict", "step", int(item.get("step", 0)), 0)
            for k, state_name in enumerate(self.STATE):
                if state_name in arrays:
                    st.bufs[k] = np.array(arrays[state_name], copy=True).reshape(-1)
            st.dtype = next((b.dtype for b in st.bufs if b is not None), None)
            st.device = CPU
            if 0 not in tuple(p.shape):
                # onto the parameter's device and dtype now (bound to its storage at its next
                # step; a still zero-sized parameter gets its state converted then)
                dtype, device = np.dtype(p.dtype), p.device
                st.bufs = [None if b is None else _convert(b, dtype, device) for b in st.bufs]
                st.dtype, st.device = dtype, device
            states[p] = st
        lr = v.check_float(name, "lr", sd.get("lr", self._lr), 0.0)
        clip = sd.get("clip_norm", self.clip_norm)
        if clip is not None:
            clip = v.check_float(name, "clip_norm", clip, 0.0, None, True)
        # everything checked: now commit
        for group, values in zip(self.param_groups, new_groups):
            group.update(values)
        self._cache = [None] * len(self.param_groups)
        self.state = states
        self._lr, self.clip_norm = lr, clip
        return self

    def __repr__(self):
        lines = [f"{type(self).__name__}(lr={self._lr!r}, clip_norm={self.clip_norm!r}"]
        for i, group in enumerate(self.param_groups):
            values = ", ".join(f"{k}={group[k]!r}" for k in self._keys)
            lines.append(f"  group {i}: {len(group['params'])} params, {values}")
        return "\n".join(lines) + ")"


class _Hyper:
    """A group's validated hyperparameters as attributes (fast to read in the step loop)."""

    def __init__(self, values):
        self.__dict__.update(values)


def clip_grad_norm(params, max_norm):
    """Scale all gradients in place so that their global L2 norm is at most ``max_norm``.

    total = sqrt(sum over parameters of sum(grad²)) (float64, deterministic order); when
    max_norm / (total + 1e-6) < 1 every gradient is multiplied by that factor, as
    ``torch.nn.utils.clip_grad_norm_`` does (seed S2 eq 7.1: g ← g·ω/‖g‖ if ‖g‖ > ω).
    Returns total (the norm before clipping) as a Python float.
    """
    op = "clip_grad_norm"
    max_norm = v.check_float(op, "max_norm", max_norm, 0.0, None, True)
    if isinstance(params, Parameter):
        params = [params]
    elif not hasattr(params, "__iter__"):
        raise TypeError(f"{op}: params must be an iterable of Parameters, got "
                        f"{type(params).__name__}")
    grads = []
    for p in params:
        if not isinstance(p, Parameter):
            raise TypeError(f"{op}: params must contain Parameters, got {type(p).__name__}")
        g = p.grad
        if g is not None and 0 not in tuple(g.shape):
            grads.append(g)
    total = 0.0
    on_gpu = []
    for g in grads:
        if device_of_array(g) == CPU:
            total += impl(_OPS, CPU).sum_squares(g)
        else:
            on_gpu.append(g)
    if on_gpu:  # all CUDA gradients in one reduction: one host synchronisation, not one each
        total += impl(_OPS, CUDA).sum_squares_many(on_gpu)
    total = math.sqrt(total)
    coef = max_norm / (total + 1e-6)
    if not coef >= 1.0:  # also NaN, as torch (a non-finite norm poisons the gradients)
        for g in grads:
            impl(_OPS, device_of_array(g)).scale_inplace(g, coef)
    return total


def check_pair(where, name, value):
    """A (float, float) pair."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{where}: {name} must be a pair of numbers, got {value!r}")
    for x in value:
        if isinstance(x, bool) or not isinstance(x, numbers.Real):
            raise TypeError(f"{where}: {name} must be a pair of numbers, got {value!r}")
    return float(value[0]), float(value[1])


def check_bool(where, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{where}: {name} must be a bool, got {type(value).__name__} {value!r}")
    return bool(value)
