"""Weight initialisers, each ``f(shape, rng, dtype) -> array`` with an explicit random generator.

Fans follow PyTorch: for a weight of shape (out, in, *kernel), fan_in = in * prod(kernel) and
fan_out = out * prod(kernel); a 1-D shape has fan_in = fan_out = its length. Variances (seed
catalogue §6): LeCun Var = g²/fan_in, Glorot Var = 2g²/(fan_in + fan_out), He Var = 2/fan
(ReLU gain √2 built in; pass ``nonlinearity`` for another). Uniform variants use the bound
√3·std, which has the same variance.

Layers take ``weight_init``/``bias_init`` as a name from :data:`INITIALIZERS` or any callable
with this signature (use ``functools.partial`` for options), and an ``rng`` (a
``numpy.random.Generator``; default: :func:`default_rng`, seeded by :func:`manual_seed`).
The default for dense and conv layers is PyTorch's: weights and biases U(±1/√fan_in).
"""

import math

import numpy as np

_default_rng = np.random.default_rng()


def manual_seed(seed):
    """Seed the generator that layers use when given no ``rng`` (like ``torch.manual_seed``)."""
    global _default_rng
    _default_rng = np.random.default_rng(seed)
    return _default_rng


def default_rng():
    return _default_rng


def fans(shape):
    """(fan_in, fan_out) of a parameter shape, as PyTorch computes them."""
    shape = tuple(shape)
    if len(shape) < 1:
        raise ValueError(f"fans: need at least a 1-D shape, got {shape}")
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def calculate_gain(nonlinearity, param=None):
    """PyTorch's recommended gains: linear/conv/sigmoid 1, tanh 5/3, relu √2,
    leaky_relu √(2/(1+slope²)) (slope default 0.01), selu 3/4."""
    if nonlinearity in ("linear", "identity", "conv2d", "sigmoid"):
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3.0
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else float(param)
        return math.sqrt(2.0 / (1.0 + slope * slope))
    if nonlinearity == "selu":
        return 0.75
    raise ValueError(f"calculate_gain: unknown nonlinearity {nonlinearity!r}")


def _normal(shape, rng, dtype, std):
    return (rng.standard_normal(shape) * std).astype(dtype)


def _uniform(shape, rng, dtype, bound):
    return rng.uniform(-bound, bound, shape).astype(dtype)


def zeros(shape, rng=None, dtype=np.float32):
    return np.zeros(shape, dtype)


def ones(shape, rng=None, dtype=np.float32):
    return np.ones(shape, dtype)


def normal(shape, rng, dtype=np.float32, *, std=1.0):
    """N(0, std²) — e.g. seed 002's "high" (std 1) and "low" (std 1e-4) init scales."""
    return _normal(shape, rng, dtype, std)


def uniform(shape, rng, dtype=np.float32, *, bound=0.01):
    """U(-bound, bound)."""
    return _uniform(shape, rng, dtype, bound)


def lecun_normal(shape, rng, dtype=np.float32, *, gain=1.0):
    """N(0, g²/fan_in): the SELU/self-normalising recipe (S1:2872)."""
    return _normal(shape, rng, dtype, gain / math.sqrt(fans(shape)[0]))


def lecun_uniform(shape, rng, dtype=np.float32, *, gain=1.0):
    return _uniform(shape, rng, dtype, gain * math.sqrt(3.0 / fans(shape)[0]))


def glorot_normal(shape, rng, dtype=np.float32, *, gain=1.0):
    """Xavier: N(0, 2g²/(fan_in + fan_out)) (S1:2900; torch.nn.init.xavier_normal_)."""
    fan_in, fan_out = fans(shape)
    return _normal(shape, rng, dtype, gain * math.sqrt(2.0 / (fan_in + fan_out)))


def glorot_uniform(shape, rng, dtype=np.float32, *, gain=1.0):
    fan_in, fan_out = fans(shape)
    return _uniform(shape, rng, dtype, gain * math.sqrt(6.0 / (fan_in + fan_out)))


def _he_std(shape, mode, nonlinearity, param):
    fan_in, fan_out = fans(shape)
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"he init: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    return calculate_gain(nonlinearity, param) / math.sqrt(fan_in if mode == "fan_in" else fan_out)


def he_normal(shape, rng, dtype=np.float32, *, mode="fan_in", nonlinearity="relu", param=None):
    """Kaiming: N(0, gain²/fan) with the ReLU gain √2 by default (S1:2950, S0 eq 4.22)."""
    return _normal(shape, rng, dtype, _he_std(shape, mode, nonlinearity, param))


def he_uniform(shape, rng, dtype=np.float32, *, mode="fan_in", nonlinearity="relu", param=None):
    return _uniform(shape, rng, dtype, math.sqrt(3.0) * _he_std(shape, mode, nonlinearity, param))


def torch_default(shape, rng, dtype=np.float32, *, fan_in=None):
    """PyTorch's default for Linear/Conv weights and biases: U(±1/√fan_in).

    (``kaiming_uniform_(a=√5)`` for weights, which reduces to this bound.) For a bias, pass the
    layer's weight fan_in.
    """
    fan_in = fans(shape)[0] if fan_in is None else fan_in
    return _uniform(shape, rng, dtype, 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0)


INITIALIZERS = {f.__name__: f for f in (
    zeros, ones, normal, uniform, lecun_normal, lecun_uniform, glorot_normal, glorot_uniform,
    he_normal, he_uniform, torch_default)}
INITIALIZERS.update(xavier_normal=glorot_normal, xavier_uniform=glorot_uniform,
                    kaiming_normal=he_normal, kaiming_uniform=he_uniform)


def get(init):
    """An initialiser from its name or a callable ``f(shape, rng, dtype)``."""
    if callable(init):
        return init
    try:
        return INITIALIZERS[init]
    except (KeyError, TypeError):
        raise ValueError(f"unknown initializer {init!r}; expected a callable f(shape, rng, dtype) "
                         f"or one of {sorted(INITIALIZERS)}") from None
