"""CUDA dense (nnkern/ops/dense/cuda.py) against the NumPy reference (simulator or GPU)."""

import numpy as np
import pytest

import nnkern
import nnkern.functional as F
from nnkern.backend import device_of, to_host
from nnkern.ops.dense import ref
from nnkern.testing import assert_close

pytestmark = pytest.mark.cuda


def _dev(a):
    return nnkern.to_device(a, "cuda")


def _make(rng, n, i, o, dtype):
    x = rng.standard_normal((n, i)).astype(dtype)
    w = rng.standard_normal((o, i)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    dy = rng.standard_normal((n, o)).astype(dtype)
    return x, w, b, dy


@pytest.mark.parametrize("shape, dtype", [
    ((1, 7, 3), np.float32),          # batch of 1
    ((17, 33, 9), np.float32),
    ((5, 3, 70), np.float64),
    ((66, 20, 1), np.float64),        # one output feature, a batch over one 64-row tile
])
def test_forward_backward_match_reference(rng, shape, dtype):
    x, w, b, dy = _make(rng, *shape, dtype)
    y = F.dense_forward(_dev(x), _dev(w), _dev(b))
    assert device_of(y) == "cuda" and y.dtype == dtype
    x64, w64, b64, dy64 = (a.astype(np.float64) for a in (x, w, b, dy))
    assert_close(to_host(y), ref.dense_forward(x64, w64, b64), scale=shape[1] / 10 + 1)
    grads = F.dense_backward(_dev(dy), _dev(x), _dev(w))
    for got, want in zip(grads, ref.dense_backward(dy64, x64, w64)):
        assert device_of(got) == "cuda" and got.dtype == dtype
        assert_close(to_host(got), want, scale=max(shape) / 10 + 1)


def test_without_bias_and_without_dx(rng):
    x, w, _, dy = _make(rng, 4, 3, 2, np.float64)
    assert_close(to_host(F.dense_forward(_dev(x), _dev(w))), x @ w.T)
    dx, dw, db = F.dense_backward(_dev(dy), _dev(x), _dev(w), has_bias=False, need_dx=False)
    assert dx is None and db is None
    assert_close(to_host(dw), dy.T @ x)


def test_writes_into_out_buffers(rng):
    x, w, b, dy = _make(rng, 6, 5, 4, np.float32)
    y = _dev(np.full((6, 4), np.nan, np.float32))
    assert F.dense_forward(_dev(x), _dev(w), _dev(b), out=y) is y
    assert_close(to_host(y), ref.dense_forward(x, w, b))
    bufs = tuple(_dev(np.full_like(a, np.nan)) for a in (x, w, b))
    grads = F.dense_backward(_dev(dy), _dev(x), _dev(w), out=bufs)
    assert all(g is buf for g, buf in zip(grads, bufs))
    for got, want in zip(grads, ref.dense_backward(dy, x, w)):
        assert_close(to_host(got), want)


def test_long_batch_splits_and_stays_deterministic(rng, monkeypatch):
    # dw = dy.T @ x reduces over the batch: split into chunks (combined in a fixed order), and
    # db's column sums run over several row chunks; two runs give identical bits
    from nnkern.ops import _gemm_cuda
    from nnkern.ops.dense import cuda as dense_cuda
    monkeypatch.setattr(_gemm_cuda, "SPLIT_MIN_K", 16)
    monkeypatch.setattr(dense_cuda, "COLSUM_ROWS", 24)
    x, w, b, dy = _make(rng, 70, 3, 5, np.float32)
    runs = [[to_host(g) for g in F.dense_backward(_dev(dy), _dev(x), _dev(w))] for _ in range(2)]
    for got, want in zip(runs[0], ref.dense_backward(*(a.astype(np.float64) for a in (dy, x, w)))):
        assert_close(got, want, scale=8)
    for first, second in zip(*runs):
        assert first.tobytes() == second.tobytes()


def test_device_mixing_is_an_error(rng):
    x, w, b, _ = _make(rng, 2, 3, 4, np.float32)
    with pytest.raises(ValueError, match=r"x on cuda; w on cpu"):
        F.dense_forward(_dev(x), w)
    with pytest.raises(ValueError, match=r"arrays must live on one device"):
        F.dense_forward(_dev(x), _dev(w), _dev(b), out=np.empty((2, 4), np.float32))
    with pytest.raises(TypeError, match="w has dtype float64"):
        F.dense_forward(_dev(x), _dev(w.astype(np.float64)))
