"""Every layer: output shapes, parameters, float64 gradients, train/eval, state dicts."""

import numpy as np
import pytest

from nnkern import layers as L
from nnkern.testing import check_gradients


def away_from_kinks(rng, shape):
    """Random values with |x| >= 0.1, so relu-like kinks at 0 are far from every input."""
    x = rng.standard_normal(shape)
    return np.sign(x) * (0.1 + np.abs(x))


def distinct(rng, shape):
    """A shuffled linspace: no ties, so max pooling's argmax is unique."""
    return rng.permutation(np.linspace(-2, 2, int(np.prod(shape)))).reshape(shape)


# (id, layer factory, input shape, input maker, expected parameter count)
CASES = [
    ("dense", lambda: L.Dense(5, 3), (4, 5), away_from_kinks, 18),
    ("dense_nobias", lambda: L.Dense(5, 3, bias=False), (1, 5), away_from_kinks, 15),
    ("conv_strided", lambda: L.Conv2D(3, 4, (3, 2), stride=(2, 1), padding=(1, 0),
                                      dilation=(1, 2)), (2, 3, 7, 6), away_from_kinks, 76),
    ("conv_same", lambda: L.Conv2D(2, 3, 3, padding="same"), (2, 2, 5, 4), away_from_kinks, 57),
    ("conv_1x1", lambda: L.Conv2D(2, 3, 1, bias=False), (1, 2, 3, 3), away_from_kinks, 6),
    ("maxpool", lambda: L.MaxPool2D(2), (2, 3, 4, 5), distinct, 0),
    ("maxpool_overlap", lambda: L.MaxPool2D(3, stride=2, padding=1), (2, 2, 5, 5), distinct, 0),
    ("avgpool", lambda: L.AvgPool2D(3, 2, 1), (2, 2, 5, 6), away_from_kinks, 0),
    ("avgpool_ceil", lambda: L.AvgPool2D(2, padding=1, ceil_mode=True, count_include_pad=False),
     (1, 2, 5, 4), away_from_kinks, 0),
    ("gap", lambda: L.GlobalAvgPool2D(), (2, 3, 4, 5), away_from_kinks, 0),
    ("bn1d", lambda: L.BatchNorm1D(5), (6, 5), away_from_kinks, 10),
    ("bn1d_3d", lambda: L.BatchNorm1D(3), (4, 3, 5), away_from_kinks, 6),
    ("bn2d", lambda: L.BatchNorm2D(3), (2, 3, 4, 5), away_from_kinks, 6),
    ("flatten", lambda: L.Flatten(), (2, 3, 4, 5), away_from_kinks, 0),
    ("relu", lambda: L.ReLU(), (3, 4), away_from_kinks, 0),
    ("leaky_relu", lambda: L.LeakyReLU(0.2), (3, 4), away_from_kinks, 0),
    ("prelu", lambda: L.PReLU(3), (2, 3, 2, 2), away_from_kinks, 3),
    ("prelu_shared", lambda: L.PReLU(), (4, 5), away_from_kinks, 1),
    ("elu", lambda: L.ELU(0.7), (3, 4), away_from_kinks, 0),
    ("selu", lambda: L.SELU(), (3, 4), away_from_kinks, 0),
    ("sigmoid", lambda: L.Sigmoid(), (3, 4), away_from_kinks, 0),
    ("tanh", lambda: L.Tanh(), (3, 4), away_from_kinks, 0),
    ("softmax", lambda: L.Softmax(), (3, 4), away_from_kinks, 0),
    ("softmax_4d", lambda: L.Softmax(), (2, 3, 2, 2), away_from_kinks, 0),
    ("shift_element", lambda: L.Shift("element", (3, 2, 2)), (2, 3, 2, 2), away_from_kinks, 12),
    ("shift_channel", lambda: L.Shift("channel", 3), (2, 3, 2, 2), away_from_kinks, 3),
    ("shift_layer", lambda: L.Shift("layer"), (4, 5), away_from_kinks, 1),
    ("scale_element", lambda: L.Scale("element", 5), (4, 5), away_from_kinks, 5),
    ("scale_channel", lambda: L.Scale("channel", 3), (2, 3, 2, 2), away_from_kinks, 3),
    ("scale_layer", lambda: L.Scale("layer"), (2, 3, 2, 2), away_from_kinks, 1),
]
IDS = [c[0] for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_output_shape_and_parameter_count(rng, case):
    _, make, shape, fill, count = case
    layer = make()
    y = layer.forward(fill(rng, shape).astype(np.float32))
    assert y.shape == layer.output_shape(shape)
    assert y.dtype == np.float32
    assert sum(p.size for p in layer.parameters()) == count
    for p in layer.parameters():
        assert p.grad.shape == p.shape and p.name.split(".")[-1] in (
            "weight", "bias", "gamma", "beta")


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradients_finite_difference(rng, case, training):
    _, make, shape, fill, _ = case
    layer = make().astype(np.float64)
    for p in layer.parameters():  # move parameters off their init values (ones/zeros)
        p.data = p.data + 0.1 * away_from_kinks(rng, p.shape)
    if "running_var" in layer._buffers:
        layer._set_buffer("running_mean", rng.standard_normal(layer.buffer("running_mean").shape))
        layer._set_buffer("running_var", rng.uniform(0.5, 2.0, layer.buffer("running_var").shape))
    x = fill(rng, shape).astype(np.float64)
    y = layer.forward(x, training)
    r = rng.standard_normal(y.shape)
    dx = layer.backward(r)
    analytic = {"x": dx, **{p.name: p.grad.copy() for p in layer.parameters()}}
    params = {"x": x, **{p.name: p.data for p in layer.parameters()}}
    check_gradients(lambda: float(np.sum(layer.forward(x, training) * r)), params, analytic)


def test_dropout_gradient_with_its_mask(rng):
    for layer, shape in ((L.Dropout(0.3), (4, 6)), (L.SpatialDropout2D(0.5), (3, 4, 2, 2))):
        x = rng.standard_normal(shape)
        seed_state = layer.rng.bit_generator.state
        y = layer.forward(x, training=True)
        r = rng.standard_normal(shape)
        dx = layer.backward(r)

        def loss(layer=layer, x=x, seed_state=seed_state, r=r):
            layer.rng.bit_generator.state = seed_state  # the same mask on every evaluation
            return float(np.sum(layer.forward(x, training=True) * r))

        check_gradients(loss, {"x": x}, {"x": dx})
        assert np.any(y == 0) and np.any(y != 0)


def test_dropout_train_and_eval(rng):
    x = np.ones((200, 100), np.float32)
    layer = L.Dropout(0.25, rng=np.random.default_rng(0))
    y = layer.forward(x, training=True)
    assert set(np.unique(y)) == {0.0, np.float32(1 / 0.75)}
    assert abs((y == 0).mean() - 0.25) < 0.02
    assert layer.eval().forward(x) is x and layer.backward(x) is x
    spatial = L.SpatialDropout2D(0.5, rng=1).forward(np.ones((8, 6, 3, 3), np.float32), True)
    per_channel = spatial.reshape(8, 6, 9)
    assert np.all(per_channel.min(axis=2) == per_channel.max(axis=2))  # whole channels


def test_dropout_is_reproducible_from_its_generator():
    x = np.ones((10, 10), np.float32)
    a = L.Dropout(0.5, rng=np.random.default_rng(7)).forward(x, True)
    b = L.Dropout(0.5, rng=np.random.default_rng(7)).forward(x, True)
    np.testing.assert_array_equal(a, b)


def test_batch_norm_running_statistics_follow_pytorch(rng):
    layer = L.BatchNorm2D(3, momentum=0.2)
    mean, var = np.zeros(3), np.ones(3)
    for _ in range(4):
        x = (rng.standard_normal((5, 3, 4, 4)) * 2 + 1).astype(np.float32)
        layer.forward(x)
        n = 5 * 4 * 4
        batch_mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
        batch_var = x.var(axis=(0, 2, 3), dtype=np.float64) * n / (n - 1)  # unbiased
        mean, var = 0.8 * mean + 0.2 * batch_mean, 0.8 * var + 0.2 * batch_var
    np.testing.assert_allclose(layer.buffer("running_mean"), mean, rtol=1e-5)
    np.testing.assert_allclose(layer.buffer("running_var"), var, rtol=1e-5)
    assert layer.num_batches_tracked == 4
    # eval mode normalises with the running statistics and leaves them alone
    x = rng.standard_normal((2, 3, 4, 4)).astype(np.float32)
    y = layer.eval().forward(x)
    expected = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    assert layer.num_batches_tracked == 4


def test_batch_norm_cumulative_average_when_momentum_is_none(rng):
    layer = L.BatchNorm1D(2, momentum=None)
    batches = [rng.standard_normal((6, 2)).astype(np.float32) for _ in range(3)]
    for x in batches:
        layer.forward(x)
    expected = np.mean([x.mean(axis=0) for x in batches], axis=0)
    np.testing.assert_allclose(layer.buffer("running_mean"), expected, rtol=1e-5)


def test_batch_norm_state_dict_uses_pytorch_names():
    state = L.BatchNorm2D(4).state_dict()
    assert sorted(state) == ["bias", "num_batches_tracked", "running_mean", "running_var",
                             "weight"]
    assert state["num_batches_tracked"].dtype == np.int64 and state["num_batches_tracked"].ndim == 0


@pytest.mark.parametrize("case", [c for c in CASES if c[4]], ids=[c[0] for c in CASES if c[4]])
def test_state_dict_round_trip(rng, case):
    _, make, shape, fill, _ = case
    a, b = make(), make()
    x = fill(rng, shape).astype(np.float32)
    a.forward(x)  # also updates batch-norm running statistics
    b.load_state_dict(a.state_dict())
    for key, value in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[key], value)
    a.eval(), b.eval()
    np.testing.assert_array_equal(a.forward(x), b.forward(x))


def test_parameter_data_assignment(rng):
    layer = L.Dense(3, 2)
    w = rng.standard_normal((2, 3)).astype(np.float32)
    layer.weight.data = w
    np.testing.assert_array_equal(layer.weight.data, w)
    assert layer.weight.data is not w  # copied in, the layer owns its storage
    with pytest.raises(ValueError, match=r"new data must have shape \(2, 3\), got \(3, 2\)"):
        layer.weight.data = w.T
    layer.weight.data = w.astype(np.float64)  # float64 values make the whole layer float64
    assert layer.dtype == np.float64 and layer.bias.dtype == np.float64
    assert layer.weight.grad.dtype == np.float64


def test_layer_follows_the_input_dtype(rng):
    layer = L.BatchNorm1D(3)
    y = layer.forward(rng.standard_normal((4, 3)))
    assert y.dtype == np.float64 and layer.buffer("running_mean").dtype == np.float64
    y = layer.forward(rng.standard_normal((4, 3)).astype(np.float32))
    assert y.dtype == np.float32 and layer.gamma.dtype == np.float32


def test_layers_reject_bad_input(rng):
    with pytest.raises(ValueError, match="expected input with 3 channels, got 2"):
        L.Conv2D(3, 4, 3).forward(np.ones((1, 2, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"input must be 4-D \(N, C, H, W\), got shape \(2, 3\)"):
        L.Conv2D(3, 4, 3).forward(np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="expected input with 5 features, got 4"):
        L.Dense(5, 2).forward(np.ones((3, 4), np.float32))
    with pytest.raises(TypeError, match="must be float32 or float64, got int64"):
        L.Dense(4, 2).forward(np.ones((3, 4), np.int64))
    with pytest.raises(TypeError, match="must be a numpy array or a CUDA array, got list"):
        L.ReLU().forward([1.0, -1.0])
    with pytest.raises(ValueError, match="empty batch"):
        L.Dense(4, 2).forward(np.ones((0, 4), np.float32))
    with pytest.raises(RuntimeError, match="backward called before forward"):
        L.Dense(4, 2).backward(np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match="mode must be one of"):
        L.Shift("pixel")
    with pytest.raises(ValueError, match="padding='same' needs stride 1"):
        L.Conv2D(1, 1, 3, stride=2, padding="same")
    with pytest.raises(ValueError, match="must be at most half the kernel"):
        L.MaxPool2D(2, padding=2)
    with pytest.raises(ValueError, match=r"p must be in \[0.0, 1.0\], got 1.5"):
        L.Dropout(1.5)


def test_non_contiguous_input_is_handled_by_layers(rng):
    x = rng.standard_normal((4, 10)).astype(np.float32)
    layer = L.Dense(5, 3)
    np.testing.assert_array_equal(layer.forward(x[:, ::2]),
                                  layer.forward(np.ascontiguousarray(x[:, ::2])))


def test_lazy_shift_is_sized_by_its_first_input(rng):
    layer = L.Shift("channel")
    assert layer.bias.shape == (0,)
    y = layer.forward(np.ones((2, 3, 4, 4), np.float32))
    assert layer.bias.shape == (3,) and np.all(y == 1)
    dense_layer = L.Scale("channel")  # on (N, F) channel-wise is element-wise: one per feature
    dense_layer.forward(np.ones((2, 7), np.float32))
    assert dense_layer.weight.shape == (7,)


def test_initializers_and_generators():
    a = L.Conv2D(3, 8, 3, weight_init="he_normal", rng=np.random.default_rng(1))
    b = L.Conv2D(3, 8, 3, weight_init="he_normal", rng=np.random.default_rng(1))
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    bound = 1 / np.sqrt(3 * 9)  # PyTorch's default U(±1/sqrt(fan_in))
    assert np.abs(L.Conv2D(3, 8, 3).weight.data).max() <= bound
    with pytest.raises(ValueError, match="unknown initializer 'he'"):
        L.Dense(2, 2, weight_init="he")
