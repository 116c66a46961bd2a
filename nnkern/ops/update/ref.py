"""NumPy reference for the update rules: torch.optim's single-tensor code, operation by
operation (``grad.add(param, alpha=wd)`` is ``d = d + wd * p``, ``addcmul_(a, b, value=c)`` is
``x + c * a * b``, ``addcdiv_(a, b, value=c)`` is ``x + c * (a / b)``, ``lerp_`` is
:func:`_lerp`). Slow and obvious on purpose: the test oracle. All updates are in place; NumPy 2
keeps Python-float hyperparameters in the arrays' dtype (NEP 50), as PyTorch does."""

import math

import numpy as np


def _regularized(p, g, weight_decay, l1):
    d = g.copy()
    if weight_decay != 0:
        d = d + weight_decay * p
    if l1 != 0:
        d = d + l1 * np.sign(p)
    return d


def _lerp(start, end, weight):
    """torch.lerp: start + w (end - start) for |w| < 0.5, else end - (end - start)(1 - w),
    with w cast to the arrays' dtype first."""
    w = start.dtype.type(weight)
    if abs(w) < 0.5:
        return start + w * (end - start)
    return end - (end - start) * (start.dtype.type(1) - w)


def sgd_update(p, g, buf=None, *, lr, momentum=0.0, dampening=0.0, nesterov=False,
               weight_decay=0.0, l1=0.0, first=False):
    d = _regularized(p, g, weight_decay, l1)
    if momentum != 0:
        if first:
            buf[...] = d
        else:
            buf[...] = buf * momentum + (1 - dampening) * d
        d = d + momentum * buf if nesterov else buf
    p[...] = p + (-lr) * d


def adagrad_update(p, g, state_sum, *, clr, eps=1e-10, weight_decay=0.0, l1=0.0):
    d = _regularized(p, g, weight_decay, l1)
    state_sum[...] = state_sum + 1 * d * d
    std = np.sqrt(state_sum) + eps
    p[...] = p + (-clr) * (d / std)


def rmsprop_update(p, g, square_avg, grad_avg=None, buf=None, *, lr, alpha=0.99, eps=1e-8,
                   weight_decay=0.0, l1=0.0, momentum=0.0, centered=False):
    d = _regularized(p, g, weight_decay, l1)
    square_avg[...] = square_avg * alpha + (1 - alpha) * d * d
    if centered:
        grad_avg[...] = _lerp(grad_avg, d, 1 - alpha)
        avg = np.sqrt(square_avg + (-1) * grad_avg * grad_avg)
    else:
        avg = np.sqrt(square_avg)
    avg = avg + eps
    if momentum > 0:
        buf[...] = buf * momentum + d / avg
        p[...] = p + (-lr) * buf
    else:
        p[...] = p + (-lr) * (d / avg)


def adadelta_update(p, g, square_avg, acc_delta, *, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0,
                    l1=0.0):
    d = _regularized(p, g, weight_decay, l1)
    square_avg[...] = square_avg * rho + (1 - rho) * d * d
    std = np.sqrt(square_avg + eps)
    delta = np.sqrt(acc_delta + eps)
    delta = delta / std * d
    acc_delta[...] = acc_delta * rho + (1 - rho) * delta * delta
    p[...] = p + (-lr) * delta


def adam_update(p, g, exp_avg, exp_avg_sq, max_exp_avg_sq=None, *, lr, beta1=0.9, beta2=0.999,
                eps=1e-8, step, weight_decay=0.0, l1=0.0, amsgrad=False, decoupled=False):
    if decoupled:
        if weight_decay != 0:
            p[...] = p * (1 - lr * weight_decay)
        d = _regularized(p, g, 0.0, l1)
    else:
        d = _regularized(p, g, weight_decay, l1)
    exp_avg[...] = _lerp(exp_avg, d, 1 - beta1)
    exp_avg_sq[...] = exp_avg_sq * beta2 + (1 - beta2) * d * d
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2 ** 0.5
    if amsgrad:
        max_exp_avg_sq[...] = np.maximum(max_exp_avg_sq, exp_avg_sq)
        denom = np.sqrt(max_exp_avg_sq) / bias_correction2_sqrt + eps
    else:
        denom = np.sqrt(exp_avg_sq) / bias_correction2_sqrt + eps
    p[...] = p + (-step_size) * (exp_avg / denom)


def rprop_update(p, g, prev, step_size, *, etaminus=0.5, etaplus=1.2, step_size_min=1e-6,
                 step_size_max=50.0, weight_decay=0.0, l1=0.0):
    d = _regularized(p, g, weight_decay, l1)
    sign = np.sign(d * prev)
    sign[sign > 0] = etaplus
    sign[sign < 0] = etaminus
    sign[sign == 0] = 1
    step_size[...] = np.minimum(np.maximum(step_size * sign, step_size_min), step_size_max)
    d[sign == p.dtype.type(etaminus)] = 0
    p[...] = p + (-1) * np.sign(d) * step_size
    prev[...] = d


def max_norm_update(w, max_norm):
    rows = w.reshape(w.shape[0], -1)
    for o in range(rows.shape[0]):
        norm = math.sqrt(float(np.sum(rows[o].astype(np.float64) ** 2)))
        if norm > max_norm:
            rows[o] *= max_norm / (norm + 1e-7)


def sum_squares(x):
    return float(np.sum(x.astype(np.float64) ** 2))


def scale_inplace(x, factor):
    x *= factor
