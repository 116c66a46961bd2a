"""The seeds' reference models, as functions returning ``Sequential`` models.

* :func:`mlp` — seed 002's MLP (table 6.2): flatten → 3 × (linear 100 [→ BN] → activation) →
  linear c (softmax lives in the loss).
* :func:`vgg10` — seed 002's VGG-like CNN (table 6.3): 5 pairs of 3×3 convolutions (64, 128,
  256, 512, 512 filters; pad 1) each followed by 2×2/2 max pooling, then 2 × linear 512 and a
  c-way classifier; BN between each conv/linear and its activation; optional dropout between
  the two convolutions of each pair and before the classifier (S2:1195).
* :func:`small_cnn` — a 2-conv CNN with BN (not from a seed; a quick, strong baseline).
* :func:`allconv` — seed 000's all-convolutional net (table 6.2) with its shift/scale variants.
* :func:`mlp24` — seed 000's 24-layer MLP (table 6.3) with its shift/scale variants.

Seed 000's variants (table 6.1): "plain", "bn" (batch norm after each conv/dense), and the
shift (sh: y = x + b) / scale (sc: y = w·x) layers placed after every activation and right
after the input, element-wise (sh, sc), channel-wise (csh, csc) or layer-wise (lsh, lsc), alone
or combined shift-then-scale (sh_sc, csh_csc, lsh_lsc). Channel-wise falls back to element-wise
after dense layers, as the thesis does.

Initialisation follows the seeds: He (Kaiming) normal for ReLU/ELU nets and Glorot for
sigmoid/tanh (S2:1237, 1885); seed 000 uses He everywhere except Glorot for the MLP's last
layer (S0:1179); biases start at 0.
"""

import math

from nnkern import layers as L
from nnkern.layers._common import make_rng
from nnkern.model import Sequential

ACTIVATIONS = {"relu": L.ReLU, "sigmoid": L.Sigmoid, "tanh": L.Tanh, "elu": L.ELU,
               "selu": L.SELU, "leaky_relu": L.LeakyReLU}
VARIANTS = ("plain", "bn", "sh", "sc", "sh_sc", "csh", "csc", "csh_csc", "lsh", "lsc", "lsh_lsc")


def activation_layer(name):
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}") \
            from None


def default_init(activation):
    """Seed 002's rule: Kaiming for ReLU-like activations, Xavier for saturating ones."""
    return "glorot_normal" if activation in ("sigmoid", "tanh") else \
        "lecun_normal" if activation == "selu" else "he_normal"


def _check_variant(variant):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")


def shift_scale_layers(variant, shape):
    """The shift/scale layers of a seed-000 variant for activations of per-sample ``shape``."""
    layers = []
    if variant in ("plain", "bn"):
        return layers
    granularity = {"": "element", "c": "channel", "l": "layer"}[variant[0] if variant[0] in "cl"
                                                                else ""]
    size = {"element": tuple(shape), "channel": shape[0], "layer": None}[granularity]
    if "sh" in variant:
        layers.append(L.Shift(granularity, size))
    if "sc" in variant:
        layers.append(L.Scale(granularity, size))
    return layers


def mlp(in_features=784, num_classes=10, hidden=(100, 100, 100), batch_norm=False,
        activation="relu", dropout=0.0, weight_init=None, rng=None):
    """Seed 002's MLP (3 × 100 by default), for (N, C, H, W) or (N, features) input."""
    rng = make_rng(rng)
    init = weight_init or default_init(activation)
    layers = [L.Flatten()]
    width = in_features
    for units in hidden:
        layers.append(L.Dense(width, units, bias=not batch_norm, weight_init=init,
                              bias_init="zeros", rng=rng))
        if batch_norm:
            layers.append(L.BatchNorm1D(units))
        layers.append(activation_layer(activation))
        if dropout:
            layers.append(L.Dropout(dropout, rng=rng))
        width = units
    layers.append(L.Dense(width, num_classes, weight_init=init, bias_init="zeros", rng=rng))
    return Sequential(*layers)


def _conv_block(layers, c_in, c_out, batch_norm, activation, init, rng):
    layers.append(L.Conv2D(c_in, c_out, 3, padding=1, bias=not batch_norm, weight_init=init,
                           bias_init="zeros", rng=rng))
    if batch_norm:
        layers.append(L.BatchNorm2D(c_out))
    layers.append(activation_layer(activation))


def vgg10(in_channels=1, num_classes=10, batch_norm=False, activation="relu", dropout=0.0,
          weight_init=None, rng=None):
    """Seed 002's 10-convolution VGG-like net for 32×32 input (pad 28×28 images first)."""
    rng = make_rng(rng)
    init = weight_init or default_init(activation)
    layers = []
    c_in = in_channels
    for c_out in (64, 128, 256, 512, 512):
        _conv_block(layers, c_in, c_out, batch_norm, activation, init, rng)
        if dropout:
            layers.append(L.Dropout(dropout, rng=rng))
        _conv_block(layers, c_out, c_out, batch_norm, activation, init, rng)
        layers.append(L.MaxPool2D(2))
        c_in = c_out
    layers.append(L.Flatten())
    for units_in in (512, 512):
        layers.append(L.Dense(units_in, 512, bias=not batch_norm, weight_init=init,
                              bias_init="zeros", rng=rng))
        if batch_norm:
            layers.append(L.BatchNorm1D(512))
        layers.append(activation_layer(activation))
    if dropout:
        layers.append(L.Dropout(dropout, rng=rng))
    layers.append(L.Dense(512, num_classes, weight_init=init, bias_init="zeros", rng=rng))
    return Sequential(*layers)


def small_cnn(in_channels=1, num_classes=10, image_size=28, batch_norm=True, activation="relu",
              dropout=0.25, weight_init=None, rng=None, convs_per_block=1, hidden=128):
    """conv 32 → pool → conv 64 → pool → dense 128 → classifier, BN after each conv/dense.

    ``convs_per_block=2`` doubles each convolution (conv 32, conv 32 → pool → conv 64,
    conv 64 → pool: the 4-convolution CNN of ``python -m nnkern train --model cnn4``, with
    ``hidden=256`` and ``dropout=0.5`` there); ``hidden`` is the width of the dense layer.
    """
    rng = make_rng(rng)
    init = weight_init or default_init(activation)
    layers = []
    c_in = in_channels
    for c_out in (32, 64):
        for _ in range(convs_per_block):
            _conv_block(layers, c_in, c_out, batch_norm, activation, init, rng)
            c_in = c_out
        layers.append(L.MaxPool2D(2))
    side = image_size // 4
    layers += [L.Flatten(), L.Dense(64 * side * side, hidden, bias=not batch_norm,
                                    weight_init=init, bias_init="zeros", rng=rng)]
    if batch_norm:
        layers.append(L.BatchNorm1D(hidden))
    layers.append(activation_layer(activation))
    if dropout:
        layers.append(L.Dropout(dropout, rng=rng))
    layers.append(L.Dense(hidden, num_classes, weight_init=init, bias_init="zeros", rng=rng))
    return Sequential(*layers)


# seed 000, table 6.2: (out channels, kernel, padding, stride) of the nine convolutions
ALLCONV = [(96, 3, 1, 1), (96, 3, 1, 1), (96, 3, 1, 2), (192, 3, 1, 1), (192, 3, 1, 1),
           (192, 3, 1, 2), (192, 3, 0, 1), (192, 1, 0, 1), (10, 1, 0, 1)]


def _scaled(units, width):
    """``units`` times the width multiplier, at least 1."""
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width!r}")
    return max(1, round(units * width))


def allconv(in_channels=3, num_classes=10, image_size=32, variant="plain", dropout=False,
            rng=None, width=1.0):
    """Seed 000's all-convolutional net: 9 convolutions (ReLU after each, the last included),
    global average pooling as the classifier head; spatial dropout 0.5 after the two strided
    convolutions in the dropout version. ``width`` multiplies the 96/192 hidden channels
    (not in the seed: 0.25 gives a net small enough for quick CPU runs)."""
    _check_variant(variant)
    rng = make_rng(rng)
    layers = shift_scale_layers(variant, (in_channels, image_size, image_size))
    c_in, side = in_channels, image_size
    plan = [(_scaled(c, width),) + tuple(rest) for c, *rest in ALLCONV[:-1]] + \
        [(num_classes,) + ALLCONV[-1][1:]]
    for i, (c_out, k, pad, stride) in enumerate(plan):
        layers.append(L.Conv2D(c_in, c_out, k, stride=stride, padding=pad,
                               bias=variant != "bn", weight_init="he_normal",
                               bias_init="zeros", rng=rng))
        if variant == "bn":
            layers.append(L.BatchNorm2D(c_out))
        layers.append(L.ReLU())
        side = (side + 2 * pad - k) // stride + 1
        if i < len(plan) - 1:  # not after the classifier convolution
            layers += shift_scale_layers(variant, (c_out, side, side))
        if dropout and stride == 2:
            layers.append(L.SpatialDropout2D(0.5, rng=rng))
        c_in = c_out
    layers.append(L.GlobalAvgPool2D())
    return Sequential(*layers)


def mlp24(in_features=3072, num_classes=10, variant="plain", dropout=False, rng=None,
          width=1.0):
    """Seed 000's 24-layer MLP: 3000, 1000, 10 × 1000, 300, 10 × 300 units, ReLU after each
    hidden layer; He init, Glorot for the last layer; dropout 0.5 after the 1st and 12th
    layers in the dropout version. ``width`` multiplies every hidden width (not in the seed:
    0.1 gives 300, 100, ..., 30 units for quick CPU runs)."""
    _check_variant(variant)
    rng = make_rng(rng)
    widths = [_scaled(u, width) for u in [3000, 1000] + [1000] * 10 + [300] + [300] * 10]
    layers = [L.Flatten()] + shift_scale_layers(variant, (in_features,))
    width = in_features
    for i, units in enumerate(widths):
        layers.append(L.Dense(width, units, bias=variant != "bn", weight_init="he_normal",
                              bias_init="zeros", rng=rng))
        if variant == "bn":
            layers.append(L.BatchNorm1D(units))
        layers.append(L.ReLU())
        layers += shift_scale_layers(variant, (units,))
        if dropout and i in (0, 11):
            layers.append(L.Dropout(0.5, rng=rng))
        width = units
    layers.append(L.Dense(width, num_classes, weight_init="glorot_normal", bias_init="zeros",
                          rng=rng))
    return Sequential(*layers)


def count_parameters(model):
    return sum(math.prod(p.shape) for p in model.parameters())
