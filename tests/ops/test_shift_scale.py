import numpy as np
import pytest

import nnkern._jit as jit
import nnkern.functional as F
from nnkern.ops.shift_scale import param_shape, ref
from nnkern.testing import assert_close, check_gradients, upstream

MODES = ["element", "channel", "layer"]
SHAPES = [(1, 1), (5, 3), (2, 3, 4, 5), (3, 7, 9), (1, 4, 1, 1), (37, 5), (3, 16400),
          (2, 33, 6, 7)]


def test_param_shapes():
    assert param_shape((8, 3, 5, 5), "element") == (3, 5, 5)
    assert param_shape((8, 3, 5, 5), "channel") == (3,)
    assert param_shape((8, 10), "channel") == (10,)  # after a dense layer: element-wise
    assert param_shape((8, 3, 5, 5), "layer") == (1,)


def test_reference_matches_hand_computed():
    x = np.array([[[[1.0, 2.0]], [[3.0, 4.0]]], [[[5.0, 6.0]], [[7.0, 8.0]]]])  # (2, 2, 1, 2)
    dy = np.ones_like(x)
    b = np.array([10.0, 20.0])
    np.testing.assert_array_equal(ref.shift_forward(x, b, "channel")[:, :, 0, :],
                                  [[[11, 12], [23, 24]], [[15, 16], [27, 28]]])
    np.testing.assert_array_equal(ref.scale_forward(x, np.array([2.0]), "layer"), 2 * x)
    be = np.arange(4.0).reshape(2, 1, 2)
    np.testing.assert_array_equal(ref.shift_forward(x, be, "element"), x + be)
    assert ref.shift_backward(dy, b, "channel")[1].tolist() == [4.0, 4.0]
    assert ref.shift_backward(dy, np.zeros(1), "layer")[1].tolist() == [8.0]
    np.testing.assert_array_equal(ref.shift_backward(dy, be, "element")[1], 2 * np.ones((2, 1, 2)))
    dx, dw = ref.scale_backward(dy, x, np.array([3.0, 0.5]), "channel")
    np.testing.assert_array_equal(dx[:, :, 0, :], [[[3, 3], [0.5, 0.5]], [[3, 3], [0.5, 0.5]]])
    np.testing.assert_array_equal(dw, [1 + 2 + 5 + 6, 3 + 4 + 7 + 8])
    assert ref.scale_backward(dy, x, np.ones(1), "layer")[1].tolist() == [36.0]


def make(rng, shape, mode, dtype):
    x = rng.standard_normal(shape).astype(dtype)
    p = rng.standard_normal(param_shape(shape, mode)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, p, dy


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", MODES)
def test_forward_backward_match_reference(rng, variant, mode, dtype):
    for shape in SHAPES:
        x, p, dy = make(rng, shape, mode, dtype)
        x64, p64, dy64 = (a.astype(np.float64) for a in (x, p, dy))
        # float32 parameter gradients sum up to N*H*W rounded products
        scale = max(1.0, dy.size / p.size / 100)
        y = F.shift_forward(x, p, mode)
        assert y.dtype == dtype
        assert_close(y, ref.shift_forward(x64, p64, mode))
        dx, db = F.shift_backward(dy, p, mode)
        assert dx is dy and db.dtype == dtype and db.shape == p.shape
        assert_close(db, ref.shift_backward(dy64, p64, mode)[1], scale=scale)
        y = F.scale_forward(x, p, mode)
        assert y.dtype == dtype
        assert_close(y, ref.scale_forward(x64, p64, mode))
        dx, dw = F.scale_backward(dy, x, p, mode)
        want_dx, want_dw = ref.scale_backward(dy64, x64, p64, mode)
        assert dx.dtype == dtype and dw.dtype == dtype and dw.shape == p.shape
        assert_close(dx, want_dx)
        assert_close(dw, want_dw, scale=scale)


def test_channel_mode_on_vectors_is_element_mode(rng):
    x, p, dy = make(rng, (6, 9), "element", np.float64)
    np.testing.assert_array_equal(F.scale_forward(x, p, "channel"),
                                  F.scale_forward(x, p, "element"))
    np.testing.assert_array_equal(F.scale_backward(dy, x, p, "channel")[1],
                                  F.scale_backward(dy, x, p, "element")[1])


@pytest.mark.parametrize("module", [ref, F], ids=["ref", "cpu"])
@pytest.mark.parametrize("mode", MODES)
def test_gradients_finite_difference(rng, module, mode):
    for shape in [(3, 4), (2, 3, 2, 3)]:
        x, p, _ = make(rng, shape, mode, np.float64)
        r = upstream(shape, rng)
        dx, db = module.shift_backward(r, p, mode)
        check_gradients(lambda x=x, p=p, r=r: float(np.sum(module.shift_forward(x, p, mode) * r)),
                        {"x": x, "b": p}, {"x": dx, "b": db})
        dx, dw = module.scale_backward(r, x, p, mode)
        check_gradients(lambda x=x, p=p, r=r: float(np.sum(module.scale_forward(x, p, mode) * r)),
                        {"x": x, "w": p}, {"x": dx, "w": dw})


@pytest.mark.parametrize("mode", MODES)
def test_parameter_gradients_are_deterministic(rng, monkeypatch, mode):
    for shape in [(64, 16, 8, 8), (4, 20000)]:
        x, p, dy = make(rng, shape, mode, np.float32)
        results = []
        for limit in (1 << 62, 0):  # every kernel serial, then every kernel parallel
            monkeypatch.setattr(jit, "PARALLEL_MIN_WORK", limit)
            results.append((F.shift_backward(dy, p, mode)[1], F.scale_backward(dy, x, p, mode)[1]))
        for a, b in zip(*results):
            np.testing.assert_array_equal(a, b)


def test_writes_into_out_buffers(rng):
    x, p, dy = make(rng, (4, 3, 2, 2), "channel", np.float32)
    out = np.empty_like(x)
    assert F.shift_forward(x, p, "channel", out=out) is out
    assert F.scale_forward(x, p, "channel", out=out) is out
    bufs = (np.empty_like(x), np.empty_like(p))
    dx, db = F.shift_backward(dy, p, "channel", out=bufs)
    assert dx is bufs[0] and db is bufs[1]
    np.testing.assert_array_equal(dx, dy)  # dy copied into the dx buffer
    dx, dw = F.scale_backward(dy, x, p, "channel", out=bufs)
    assert dx is bufs[0] and dw is bufs[1]


def test_bad_input_is_rejected_with_a_clear_message():
    x = np.ones((4, 3, 2, 2), np.float32)
    with pytest.raises(ValueError, match="shift_forward: mode must be one of 'element', "
                                         "'channel', 'layer', got 'pixel'"):
        F.shift_forward(x, np.ones(3, np.float32), "pixel")
    with pytest.raises(ValueError, match=r"b must have shape \(3,\) \(mode 'channel': one per "
                                         r"channel, C = x.shape\[1\]\), got \(2,\)"):
        F.shift_forward(x, np.ones(2, np.float32), "channel")
    with pytest.raises(ValueError, match=r"w must have shape \(3, 2, 2\) \(mode 'element'"):
        F.scale_forward(x, np.ones(3, np.float32), "element")
    with pytest.raises(ValueError, match=r"w must have shape \(1,\) \(mode 'layer': one scalar"):
        F.scale_backward(x, x, np.ones((), np.float32), "layer")
    with pytest.raises(TypeError, match="w has dtype float64 but the other arguments are float32"):
        F.scale_forward(x, np.ones(3), "channel")
    with pytest.raises(TypeError, match="x must have dtype float32 or float64, got int64"):
        F.shift_forward(np.ones((4, 3), np.int64), np.ones(3, np.float32), "channel")
    with pytest.raises(ValueError, match=r"x must be at least 2-D \(\(N, F\) or \(N, C, H, W\)\)"):
        F.shift_forward(np.ones(3, np.float32), np.ones(1, np.float32), "layer")
    with pytest.raises(ValueError, match="must be C-contiguous"):
        F.scale_forward(np.ones((4, 6), np.float32)[:, ::2], np.ones(1, np.float32), "layer")
    with pytest.raises(ValueError, match="empty batch"):
        F.shift_forward(np.ones((0, 3), np.float32), np.ones(3, np.float32), "element")
    with pytest.raises(ValueError, match=r"dy must have shape \(4, 3, 2, 2\)"):
        F.scale_backward(np.ones((4, 3), np.float32), x, np.ones(3, np.float32), "channel")
    with pytest.raises(ValueError, match=r"out db must have shape \(3,\)"):
        F.shift_backward(x, np.ones(3, np.float32), "channel",
                         out=(None, np.empty(1, np.float32)))
