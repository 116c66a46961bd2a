"""The seeds' reference architectures: shapes, parameter counts, variant layouts."""

import pytest

from nnkern import layers as L
from nnkern import models


def test_seed_002_mlp_and_vgg_shapes_and_sizes():
    mlp = models.mlp(784, 10, batch_norm=True)
    assert mlp.output_shape((5, 1, 28, 28)) == (5, 10)
    # 3 dense layers without bias (BN follows) + BN gamma/beta + the classifier
    assert models.count_parameters(mlp) == 784 * 100 + 2 * 100 * 100 + 3 * 200 + 100 * 10 + 10
    vgg = models.vgg10(1, 10, batch_norm=True)
    assert vgg.output_shape((2, 1, 32, 32)) == (2, 10)
    assert sum(isinstance(layer, L.Conv2D) for layer in vgg) == 10
    assert sum(isinstance(layer, L.MaxPool2D) for layer in vgg) == 5
    assert sum(isinstance(layer, L.BatchNorm2D) for layer in vgg) == 10
    assert not any(isinstance(layer, L.BatchNorm2D) for layer in models.vgg10(3, 100))


def test_vgg_dropout_sits_between_the_convolutions_of_each_pair():
    vgg = models.vgg10(1, 10, dropout=0.5)
    kinds = [type(layer).__name__ for layer in vgg]
    assert kinds[:6] == ["Conv2D", "ReLU", "Dropout", "Conv2D", "ReLU", "MaxPool2D"]
    assert kinds[-2:] == ["Dropout", "Dense"]


def test_seed_000_allconv_matches_table_6_2():
    net = models.allconv(3, 10)
    assert models.count_parameters(net) == 1_369_738  # All-CNN-C
    assert net.output_shape((2, 3, 32, 32)) == (2, 10)
    shapes, shape = [], (2, 3, 32, 32)
    for layer in net:
        shape = layer.output_shape(shape)
        if isinstance(layer, L.Conv2D):
            shapes.append(shape[1:])
    assert shapes[2] == (96, 16, 16) and shapes[5] == (192, 8, 8) and shapes[6] == (192, 6, 6)
    assert sum(isinstance(layer, L.SpatialDropout2D)
               for layer in models.allconv(dropout=True)) == 2


@pytest.mark.parametrize("variant", models.VARIANTS)
def test_shift_scale_variants(variant):
    net = models.allconv(3, 10, variant=variant)
    shifts = [layer for layer in net if isinstance(layer, L.Shift)]
    scales = [layer for layer in net if isinstance(layer, L.Scale)]
    # one after the input and one after each of the first 8 activations
    assert len(shifts) == (9 if "sh" in variant else 0)
    assert len(scales) == (9 if "sc" in variant else 0)
    mode = {"c": "channel", "l": "layer"}.get(variant[0], "element")
    assert all(layer.config["mode"] == mode for layer in shifts + scales)
    for a, b in zip(list(net)[:-1], list(net)[1:]):  # shift always comes before scale
        assert not (isinstance(a, L.Scale) and isinstance(b, L.Shift))
    assert net.output_shape((2, 3, 32, 32)) == (2, 10)


def test_seed_000_mlp24():
    net = models.mlp24(3072, 10, variant="csh")
    dense = [layer for layer in net if isinstance(layer, L.Dense)]
    assert len(dense) == 24
    assert [d.config["out_features"] for d in dense[:3]] == [3000, 1000, 1000]
    assert dense[-1].config["out_features"] == 10
    # channel-wise falls back to element-wise after dense layers: one bias per unit
    assert [layer.bias.shape for layer in net if isinstance(layer, L.Shift)][1] == (3000,)


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        models.mlp(activation="swish")
    with pytest.raises(ValueError, match="unknown variant 'bn2'"):
        models.allconv(variant="bn2")
