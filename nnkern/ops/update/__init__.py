"""Optimizer update rules: one fused in-place pass over a parameter and its state per step.

Each ``<rule>_update(p, g, *state, **hyperparameters)`` reads the gradient ``g``, optionally adds
the coupled regularizers ``weight_decay * p`` (L2) and ``l1 * sign(p)`` (L1) to it, updates the
rule's state arrays (momentum buffer, moments, ...) and writes the new parameter values into
``p``, all in place and in one pass. The formulas are PyTorch's (``torch.optim``, single-tensor
path), listed in each function's docstring; ``ref.py`` spells them out with NumPy in PyTorch's
operation order. ``p``, ``g`` and the state arrays share one shape and one float dtype and are
C-contiguous (the kernels work on flat views). Hyperparameters are Python numbers; kernels
cast them to the arrays' dtype once, so float32 stays float32 end to end.

Also here: ``max_norm_update`` (the max-norm constraint: rescale each output unit's incoming
weight vector), and ``sum_squares`` / ``scale_inplace`` (the two passes of gradient-norm
clipping).

These public functions validate every argument and dispatch by device; the optimizers in
``nnkern.optim`` validate once when they allocate a parameter's state and then call the
backend module (``impl(__name__, device)``) directly, which is why the backends trust their
arguments (Python floats and bools, matching shapes and dtypes).
"""

import numbers

import numpy as np

from nnkern import _validate as v
from nnkern.backend import device_of
from nnkern.ops._dispatch import impl


def _arrays(op, p, g, states):
    """Check p, g and the named state arrays (None = unused); returns the device."""
    v.check_array(op, "p", p)
    v.check_array(op, "g", g, dtype=p.dtype)
    v.check_shape(op, "g", g, p.shape, "the shape of p")
    names, arrays = ["p", "g"], [p, g]
    for name, a in states.items():
        if a is not None:
            v.check_array(op, name, a, dtype=p.dtype)
            v.check_shape(op, name, a, p.shape, "the shape of p")
            names.append(name)
            arrays.append(a)
    # in-place updates through aliased arrays would read values already overwritten
    for i in range(len(arrays)):
        for j in range(i):
            if _overlap(arrays[i], arrays[j]):
                raise ValueError(f"{op}: {names[j]} and {names[i]} must be distinct arrays "
                                 "(they share memory)")
    return device_of(*arrays, names=names)


def _overlap(a, b):
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return np.may_share_memory(a, b)
    return a is b


def _need(op, name, a, why):
    if a is None:
        raise ValueError(f"{op}: {name} is required {why}")


def _float(op, name, x, low=None, high=None, low_open=False, high_open=False):
    return v.check_float(op, name, x, low, high, low_open, high_open)


def _bool(op, name, x):
    if not isinstance(x, (bool, numbers.Integral)) or x not in (0, 1):
        raise TypeError(f"{op}: {name} must be a bool, got {type(x).__name__} {x!r}")
    return bool(x)


def _regularizers(op, weight_decay, l1):
    return _float(op, "weight_decay", weight_decay, 0.0), _float(op, "l1", l1, 0.0)


def sgd_update(p, g, buf=None, *, lr, momentum=0.0, dampening=0.0, nesterov=False,
               weight_decay=0.0, l1=0.0, first=False):
    """SGD with optional (Nesterov) momentum, in place (``torch.optim.SGD``):

        d = g + weight_decay * p + l1 * sign(p)
        buf = d                                  (first step: ``first=True``)
        buf = momentum * buf + (1 - dampening) * d   (later steps)
        d = d + momentum * buf if nesterov else buf  (only when momentum != 0)
        p = p - lr * d

    ``buf`` (the momentum buffer) is required when momentum != 0 and unused otherwise.
    """
    op = "sgd_update"
    lr = _float(op, "lr", lr, 0.0)
    momentum = _float(op, "momentum", momentum, 0.0)
    dampening = _float(op, "dampening", dampening, 0.0, 1.0)
    nesterov, first = _bool(op, "nesterov", nesterov), _bool(op, "first", first)
    weight_decay, l1 = _regularizers(op, weight_decay, l1)
    if nesterov and (momentum == 0.0 or dampening != 0.0):
        raise ValueError(f"{op}: nesterov needs momentum > 0 and dampening = 0, got momentum "
                         f"{momentum} and dampening {dampening}")
    if momentum != 0.0:
        _need(op, "buf", buf, "when momentum != 0")
    else:
        buf = None
    device = _arrays(op, p, g, {"buf": buf})
    impl(__name__, device).sgd_update(p, g, buf, lr=lr, momentum=momentum, dampening=dampening,
                                      nesterov=nesterov, weight_decay=weight_decay, l1=l1,
                                      first=first)


def adagrad_update(p, g, state_sum, *, clr, eps=1e-10, weight_decay=0.0, l1=0.0):
    """AdaGrad, in place (``torch.optim.Adagrad``; ε outside the square root):

        d = g + weight_decay * p + l1 * sign(p)
        state_sum = state_sum + d²
        p = p - clr * d / (sqrt(state_sum) + eps)

    ``clr`` is the step's learning rate lr / (1 + (step - 1) * lr_decay).
    """
    op = "adagrad_update"
    clr = _float(op, "clr", clr, 0.0)
    eps = _float(op, "eps", eps, 0.0)
    weight_decay, l1 = _regularizers(op, weight_decay, l1)
    _need(op, "state_sum", state_sum, "")
    device = _arrays(op, p, g, {"state_sum": state_sum})
    impl(__name__, device).adagrad_update(p, g, state_sum, clr=clr, eps=eps,
                                          weight_decay=weight_decay, l1=l1)


def rmsprop_update(p, g, square_avg, grad_avg=None, buf=None, *, lr, alpha=0.99, eps=1e-8,
                   weight_decay=0.0, l1=0.0, momentum=0.0, centered=False):
    """RMSProp, in place (``torch.optim.RMSprop``; ε outside the square root):

        d = g + weight_decay * p + l1 * sign(p)
        square_avg = alpha * square_avg + (1 - alpha) * d²
        grad_avg = lerp(grad_avg, d, 1 - alpha)                       (centered only)
        avg = sqrt(square_avg - grad_avg²) + eps   (centered)  or  sqrt(square_avg) + eps
        buf = momentum * buf + d / avg;  p = p - lr * buf             (momentum > 0)
        p = p - lr * d / avg                                          (momentum = 0)

    ``grad_avg`` is required when centered, ``buf`` when momentum > 0.
    """
    op = "rmsprop_update"
    lr = _float(op, "lr", lr, 0.0)
    alpha = _float(op, "alpha", alpha, 0.0, 1.0)
    eps = _float(op, "eps", eps, 0.0)
    momentum = _float(op, "momentum", momentum, 0.0)
    centered = _bool(op, "centered", centered)
    weight_decay, l1 = _regularizers(op, weight_decay, l1)
    _need(op, "square_avg", square_avg, "")
    if centered:
        _need(op, "grad_avg", grad_avg, "when centered")
    else:
        grad_avg = None
    if momentum > 0.0:
        _need(op, "buf", buf, "when momentum > 0")
    else:
        buf = None
    device = _arrays(op, p, g, {"square_avg": square_avg, "grad_avg": grad_avg, "buf": buf})
    impl(__name__, device).rmsprop_update(p, g, square_avg, grad_avg, buf, lr=lr, alpha=alpha,
                                          eps=eps, weight_decay=weight_decay, l1=l1,
                                          momentum=momentum, centered=centered)


def adadelta_update(p, g, square_avg, acc_delta, *, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0,
                    l1=0.0):
    """Adadelta, in place (``torch.optim.Adadelta``):

        d = g + weight_decay * p + l1 * sign(p)
        square_avg = rho * square_avg + (1 - rho) * d²
        delta = sqrt(acc_delta + eps) / sqrt(square_avg + eps) * d
        acc_delta = rho * acc_delta + (1 - rho) * delta²
        p = p - lr * delta

    (the step is *minus* delta: seed S1 eq 7.49 drops the sign.)
    """
    op = "adadelta_update"
    lr = _float(op, "lr", lr, 0.0)
    rho = _float(op, "rho", rho, 0.0, 1.0)
    eps = _float(op, "eps", eps, 0.0)
    weight_decay, l1 = _regularizers(op, weight_decay, l1)
    _need(op, "square_avg", square_avg, "")
    _need(op, "acc_delta", acc_delta, "")
    device = _arrays(op, p, g, {"square_avg": square_avg, "acc_delta": acc_delta})
    impl(__name__, device).adadelta_update(p, g, square_avg, acc_delta, lr=lr, rho=rho, eps=eps,
                                           weight_decay=weight_decay, l1=l1)


def adam_update(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, lr, beta1=0.9, beta2=0.999,
                eps=1e-8, step, weight_decay=0.0, l1=0.0, amsgrad=False, decoupled=False):
    """Adam / AdamW with bias correction, in place (``torch.optim.Adam``/``AdamW``):

        p = p * (1 - lr * weight_decay)                    (decoupled, i.e. AdamW)
        d = g + weight_decay * p + l1 * sign(p)            (weight_decay only when coupled)
        exp_avg = lerp(exp_avg, d, 1 - beta1)              (= beta1 exp_avg + (1 - beta1) d)
        exp_avg_sq = beta2 * exp_avg_sq + (1 - beta2) * d²
        max_exp_avg_sq = max(max_exp_avg_sq, exp_avg_sq)   (amsgrad; used below instead)
        denom = sqrt(exp_avg_sq) / sqrt(1 - beta2^step) + eps
        p = p - lr / (1 - beta1^step) * exp_avg / denom

    ``step`` counts this parameter's updates from 1 (this one included).
    """
    op = "adam_update"
    lr = _float(op, "lr", lr, 0.0)
    beta1 = _float(op, "beta1", beta1, 0.0, 1.0, high_open=True)
    beta2 = _float(op, "beta2", beta2, 0.0, 1.0, high_open=True)
    eps = _float(op, "eps", eps, 0.0)
    step = v.check_int(op, "step", step, 1)
    amsgrad, decoupled = _bool(op, "amsgrad", amsgrad), _bool(op, "decoupled", decoupled)
    weight_decay, l1 = _regularizers(op, weight_decay, l1)
    _need(op, "exp_avg", exp_avg, "")
    _need(op, "exp_avg_sq", exp_avg_sq, "")
    if amsgrad:
        _need(op, "max_exp_avg_sq", max_exp_avg_sq, "when amsgrad")
    else:
        max_exp_avg_sq = None
    device = _arrays(op, p, g, {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq,
                                "max_exp_avg_sq": max_exp_avg_sq})
    impl(__name__, device).adam_update(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq, lr=lr,
                                       beta1=beta1, beta2=beta2, eps=eps, step=step,
                                       weight_decay=weight_decay, l1=l1, amsgrad=amsgrad,
                                       decoupled=decoupled)


def rprop_update(p, g, prev, step_size, *, etaminus=0.5, etaplus=1.2, step_size_min=1e-6,
                 step_size_max=50.0, weight_decay=0.0, l1=0.0):
    """Rprop, in place (``torch.optim.Rprop``: no weight backtracking, "Rprop-"):

        d = g + weight_decay * p + l1 * sign(p)
        s = sign(d * prev)
        step_size = clamp(step_size * (etaplus if s > 0, etaminus if s < 0, 1 if s = 0),
                          step_size_min, step_size_max)
        d = 0 where s < 0         (after a sign change, skip this update)
        p = p - sign(d) * step_size
        prev = d

    ``prev`` starts at 0 and ``step_size`` at the learning rate.
    """
    op = "rprop_update"
    etaminus = _float(op, "etaminus", etaminus, 0.0, 1.0, True, True)
    etaplus = _float(op, "etaplus", etaplus, 1.0, None, True)
    step_size_min = _float(op, "step_size_min", step_size_min, 0.0)
    step_size_max = _float(op, "step_size_max", step_size_max, step_size_min)
    weight_decay, l1 = _regularizers(op, weight_decay, l1)
    _need(op, "prev", prev, "")
    _need(op, "step_size", step_size, "")
    device = _arrays(op, p, g, {"prev": prev, "step_size": step_size})
    impl(__name__, device).rprop_update(p, g, prev, step_size, etaminus=etaminus,
                                        etaplus=etaplus, step_size_min=step_size_min,
                                        step_size_max=step_size_max, weight_decay=weight_decay,
                                        l1=l1)


def max_norm_update(w, max_norm):
    """Max-norm constraint, in place: each output unit's incoming weight vector ``w[o]`` (a row
    of a dense (out, in) weight, the (in, kh, kw) slab of a conv filter) whose L2 norm exceeds
    ``max_norm`` is rescaled by max_norm / (norm + 1e-7), as ``torch.renorm(w, 2, 0,
    max_norm)`` does. Norms accumulate in float64. ``w`` must be at least 2-D."""
    op = "max_norm_update"
    v.check_array(op, "w", w, ndim=range(2, 33), layout="at least 2-D (out, ...)")
    max_norm = _float(op, "max_norm", max_norm, 0.0, None, True)
    impl(__name__, device_of(w)).max_norm_update(w, max_norm)


def sum_squares(x):
    """sum(x²) as a Python float, accumulated in float64 in a fixed order (deterministic,
    whatever the thread count)."""
    v.check_array("sum_squares", "x", x)
    return impl(__name__, device_of(x)).sum_squares(x)


def scale_inplace(x, factor):
    """x *= factor (factor cast to x's dtype)."""
    v.check_array("scale_inplace", "x", x)
    factor = _float("scale_inplace", "factor", factor)
    impl(__name__, device_of(x)).scale_inplace(x, factor)
