"""CUDA shift/scale against the NumPy references; deterministic parameter gradients."""

import inspect

import numpy as np
import pytest

import nnkern
import nnkern.functional as F
import nnkern.ops.shift_scale as public
from nnkern.backend import to_host
from nnkern.ops.shift_scale import cuda as gpu
from nnkern.ops.shift_scale import param_shape, ref
from nnkern.testing import assert_close

pytestmark = pytest.mark.cuda

MODES = ("element", "channel", "layer")
SHAPES = [(3, 5), (2, 3, 2, 3), (1, 3, 1, 5)]  # odd sizes, batch 1


def dev(a):
    return nnkern.to_device(a, "cuda")


def test_backend_exports_the_public_functions():
    for name in ("shift_forward", "shift_backward", "scale_forward", "scale_backward"):
        assert inspect.signature(getattr(gpu, name)) == inspect.signature(getattr(public, name))


def check_all(rng, dtype, shapes):
    for shape in shapes:
        x = rng.standard_normal(shape).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        for mode in MODES:
            p = rng.standard_normal(param_shape(shape, mode)).astype(dtype)
            what = f"{mode} {shape}"
            for name in ("shift", "scale"):
                y = getattr(F, f"{name}_forward")(dev(x), dev(p), mode)
                assert y.dtype == dtype and y.shape == shape
                assert_close(to_host(y), getattr(ref, f"{name}_forward")(x, p, mode),
                             err_msg=f"{name} {what}")
            dx, dw = F.scale_backward(dev(dy), dev(x), dev(p), mode)
            want_dx, want_dw = ref.scale_backward(dy, x, p, mode)
            assert dw.dtype == dtype and dw.shape == p.shape
            assert_close(to_host(dx), want_dx, err_msg=f"scale dx {what}")
            assert_close(to_host(dw), want_dw, scale=5, err_msg=f"scale dw {what}")
            dyd = dev(dy)
            dx, db = F.shift_backward(dyd, dev(p), mode)
            assert dx is dyd  # dx = dy, no copy
            assert_close(to_host(db), ref.shift_backward(dy, p, mode)[1], scale=5,
                         err_msg=f"shift db {what}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_forward_backward_match_reference(rng, dtype):
    check_all(rng, dtype, SHAPES)


def test_sums_over_several_tiles_match_and_are_deterministic(rng, monkeypatch):
    # tiny tiles: every reduction takes the two-kernel path (tile partials, fixed-order merge)
    monkeypatch.setattr(gpu, "_MIN_ROWS", 2)
    monkeypatch.setattr(gpu, "_MIN_CHUNK", 4)
    monkeypatch.setattr(gpu, "MAX_BLOCKS", 3)  # and tiles are looped over by fewer blocks
    gpu._cols_plan.cache_clear()
    gpu._chan_plan.cache_clear()
    try:
        check_all(rng, np.float64, [(9, 4), (3, 2, 2, 3)])
        x = rng.standard_normal((7, 3, 3)).astype(np.float32)
        dy = rng.standard_normal((7, 3, 3)).astype(np.float32)
        for mode in MODES:
            w = dev(rng.standard_normal(param_shape(x.shape, mode)).astype(np.float32))
            runs = [[to_host(a) for a in F.scale_backward(dev(dy), dev(x), w, mode)]
                    for _ in range(2)]
            for a, b in zip(*runs):
                np.testing.assert_array_equal(a, b)  # same bits twice
    finally:
        gpu._cols_plan.cache_clear()
        gpu._chan_plan.cache_clear()


def test_long_float32_sums_stay_accurate(rng):
    # one channel of 4000 values summed in float32 (per-thread then pairwise) vs float64
    x = rng.standard_normal((1000, 2, 2)).astype(np.float32)
    dy = rng.standard_normal((1000, 2, 2)).astype(np.float32)
    w = np.ones(2, np.float32)
    _, dw = F.scale_backward(dev(dy), dev(x), dev(w), "channel")
    assert_close(to_host(dw), ref.scale_backward(dy, x, w, "channel")[1], scale=10)


def test_out_buffers(rng):
    x = rng.standard_normal((2, 3, 2)).astype(np.float32)
    dy = rng.standard_normal((2, 3, 2)).astype(np.float32)
    b = rng.standard_normal(3).astype(np.float32)
    out = dev(np.zeros_like(x))
    assert F.shift_forward(dev(x), dev(b), "channel", out=out) is out
    assert_close(to_host(out), ref.shift_forward(x, b, "channel"))
    outs = (dev(np.zeros_like(x)), dev(np.zeros(3, np.float32)))
    dx, db = F.shift_backward(dev(dy), dev(b), "channel", out=outs)
    assert dx is outs[0] and db is outs[1]
    np.testing.assert_array_equal(to_host(dx), dy)  # dy copied into the dx buffer
    outs = (dev(np.zeros_like(x)), dev(np.zeros(3, np.float32)))
    dx, dw = F.scale_backward(dev(dy), dev(x), dev(b), "channel", out=outs)
    assert dx is outs[0] and dw is outs[1]
    assert_close(to_host(dw), ref.scale_backward(dy, x, b, "channel")[1])


def test_bad_input_is_rejected(rng):
    x = dev(rng.standard_normal((2, 3)).astype(np.float32))
    with pytest.raises(ValueError, match=r"x on cuda; b on cpu"):
        F.shift_forward(x, np.zeros(3, np.float32), "channel")
    with pytest.raises(ValueError, match=r"w must have shape \(1,\)"):
        F.scale_forward(x, dev(np.ones(3, np.float32)), "layer")
    with pytest.raises(ValueError, match=r"dy, b on cuda; out db on cpu"):
        F.shift_backward(x, dev(np.ones(3, np.float32)), "element",
                         out=(None, np.zeros(3, np.float32)))
