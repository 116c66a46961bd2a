"""CUDA conv2d (nnkern/ops/conv2d/cuda.py) against the NumPy reference, under the simulator or a
GPU. Shapes stay tiny (a 64x64 GEMM tile is 256 simulated threads) and off the tile sizes."""

import numpy as np
import pytest

import nnkern
import nnkern.functional as F
from nnkern.backend import device_of, to_host
from nnkern.ops.conv2d import ref
from nnkern.testing import assert_close

pytestmark = pytest.mark.cuda


def _dev(a):
    return nnkern.to_device(a, "cuda")


def _make(rng, x_shape, w_shape, dtype):
    x = rng.standard_normal(x_shape).astype(dtype)
    w = rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    return x, w, b


def _check(x, w, b, dy, opts, has_bias=True, need_dx=True):
    """Forward and backward on the device against the float64 reference."""
    dtype = x.dtype
    y = F.conv2d_forward(_dev(x), _dev(w), None if b is None else _dev(b), **opts)
    assert device_of(y) == "cuda" and y.dtype == dtype
    x64, w64, dy64 = (a.astype(np.float64) for a in (x, w, dy))
    b64 = None if b is None else b.astype(np.float64)
    reduction = w.shape[1] * w.shape[2] * w.shape[3]
    assert_close(to_host(y), ref.conv2d_forward(x64, w64, b64, **opts), scale=reduction / 10 + 1)
    grads = F.conv2d_backward(_dev(dy), _dev(x), _dev(w), **opts, has_bias=has_bias,
                              need_dx=need_dx)
    want = ref.conv2d_backward(dy64, x64, w64, **opts, has_bias=has_bias, need_dx=need_dx)
    for name, got, exp in zip(("dx", "dw", "db"), grads, want):
        if exp is None:
            assert got is None, name
            continue
        assert device_of(got) == "cuda" and got.dtype == dtype
        assert_close(to_host(got), exp, scale=dy.size / 10 + 1, err_msg=name)
    return grads


CASES = [  # x (N, C, H, W), w (K, C, KH, KW), options, dtype
    ((2, 3, 7, 6), (4, 3, 3, 3), dict(stride=2, padding=1), np.float32),           # columns dx
    ((2, 2, 6, 5), (3, 2, 2, 3), dict(padding="same", dilation=2), np.float64),    # implicit dx
    ((1, 5, 3, 4), (6, 5, 1, 1), dict(), np.float32),                              # pointwise
    ((2, 2, 6, 7), (3, 2, 3, 1), dict(stride=(2, 1), padding=(0, 2), dilation=(1, 2)),
     np.float64),
    ((1, 3, 5, 5), (2, 3, 3, 3), dict(), np.float32),                              # batch 1
    ((2, 3, 5, 4), (2, 3, 1, 1), dict(stride=2), np.float64),                      # 1x1 strided
    ((1, 2, 2, 3), (2, 2, 3, 3), dict(padding=2), np.float32),                     # pad > input
]


@pytest.mark.parametrize("x_shape, w_shape, opts, dtype", CASES,
                         ids=[f"{c[1][2]}x{c[1][3]}-{c[3].__name__}-{i}"
                              for i, c in enumerate(CASES)])
def test_forward_backward_match_reference(rng, x_shape, w_shape, opts, dtype):
    x, w, b = _make(rng, x_shape, w_shape, dtype)
    y = ref.conv2d_forward(x, w, b, **opts)
    _check(x, w, b, rng.standard_normal(y.shape).astype(dtype), opts)


def test_without_bias_and_without_dx(rng):
    x, w, _ = _make(rng, (2, 3, 5, 6), (4, 3, 3, 2), np.float64)
    dy = rng.standard_normal((2, 4, 5, 5))
    _check(x, w, None, dy, dict(padding=(1, 0)), has_bias=False, need_dx=False)


def test_writes_into_out_buffers(rng):
    x, w, b = _make(rng, (2, 2, 5, 5), (3, 2, 3, 3), np.float32)
    opts = dict(stride=2, padding="valid")
    want_y = ref.conv2d_forward(x, w, b, **opts)
    y = _dev(np.full(want_y.shape, np.nan, np.float32))
    assert F.conv2d_forward(_dev(x), _dev(w), _dev(b), **opts, out=y) is y
    assert_close(to_host(y), want_y, scale=2)
    dy = rng.standard_normal(want_y.shape).astype(np.float32)
    bufs = tuple(_dev(np.full_like(a, np.nan)) for a in (x, w, b))
    grads = F.conv2d_backward(_dev(dy), _dev(x), _dev(w), **opts, out=bufs)
    assert all(g is buf for g, buf in zip(grads, bufs))
    for got, want in zip(grads, ref.conv2d_backward(dy, x, w, **opts)):
        assert_close(to_host(got), want, scale=2)


def test_chunked_columns_split_k_and_partials_are_deterministic(rng, monkeypatch):
    # A column workspace of one image (chunks over the batch), the weight gradient's reduction
    # split into chunks, the bias gradient over several partials: each combined in a fixed
    # order, so two runs give identical bits.
    from nnkern.ops import _gemm_cuda
    from nnkern.ops.conv2d import cuda as conv_cuda
    monkeypatch.setattr(conv_cuda, "COL_BUFFER_BYTES", 1)
    monkeypatch.setattr(conv_cuda, "CHANNEL_CHUNK", 20)
    monkeypatch.setattr(_gemm_cuda, "SPLIT_MIN_K", 16)
    x, w, b = _make(rng, (3, 2, 6, 5), (3, 2, 2, 2), np.float32)
    opts = dict(stride=2, padding=1)
    y = ref.conv2d_forward(x, w, b, **opts)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    g = conv_cuda.conv_geometry("t", x.shape, w.shape, **opts)
    assert conv_cuda.chunk_size(g, 4) == 1
    runs = [[to_host(a) for a in _check(x, w, b, dy, opts)] for _ in range(2)]
    for first, second in zip(*runs):
        assert first.tobytes() == second.tobytes()


def test_implicit_dx_and_forward_are_deterministic(rng):
    x, w, b = _make(rng, (2, 3, 5, 4), (2, 3, 3, 3), np.float32)
    runs = []
    for _ in range(2):
        y = F.conv2d_forward(_dev(x), _dev(w), _dev(b), padding=1)
        dx, dw, db = F.conv2d_backward(y, _dev(x), _dev(w), padding=1)
        runs.append([to_host(a) for a in (y, dx, dw, db)])
    for first, second in zip(*runs):
        assert first.tobytes() == second.tobytes()


def test_device_mixing_is_an_error(rng):
    x, w, b = _make(rng, (1, 2, 4, 4), (3, 2, 3, 3), np.float32)
    with pytest.raises(ValueError, match=r"x on cuda; w on cpu"):
        F.conv2d_forward(_dev(x), w)
    with pytest.raises(ValueError, match=r"dy, x, w on cuda; out dw on cpu"):
        F.conv2d_backward(_dev(np.ones((1, 3, 2, 2), np.float32)), _dev(x), _dev(w),
                          out=(None, np.empty_like(w), None))
