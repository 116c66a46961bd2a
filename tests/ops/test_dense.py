import numpy as np
import pytest

import nnkern._jit as jit
import nnkern.functional as F
from nnkern.ops import _blas
from nnkern.ops.dense import cpu as dense_cpu
from nnkern.ops.dense import ref
from nnkern.testing import assert_close, check_gradients, on_one_thread, upstream

SHAPES = [(1, 1, 1), (1, 7, 3), (5, 3, 4), (17, 33, 9), (64, 100, 100)]  # (N, I, O)


def make(rng, n, i, o, dtype):
    x = rng.standard_normal((n, i)).astype(dtype)
    w = rng.standard_normal((o, i)).astype(dtype)
    b = rng.standard_normal(o).astype(dtype)
    return x, w, b


def test_reference_matches_hand_computed():
    x = np.array([[1.0, 2.0]])
    w = np.array([[1.0, -1.0], [0.5, 2.0], [0.0, 1.0]])
    b = np.array([0.5, 0.0, -1.0])
    np.testing.assert_array_equal(ref.dense_forward(x, w, b), [[-0.5, 4.5, 1.0]])
    dx, dw, db = ref.dense_backward(np.array([[1.0, 0.0, 2.0]]), x, w)
    np.testing.assert_array_equal(dx, [[1.0, 1.0]])
    np.testing.assert_array_equal(dw, [[1.0, 2.0], [0.0, 0.0], [2.0, 4.0]])
    np.testing.assert_array_equal(db, [1.0, 0.0, 2.0])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_forward_backward_match_reference(rng, variant, shape, dtype):
    x, w, b = make(rng, *shape, dtype)
    dy = rng.standard_normal((shape[0], shape[2])).astype(dtype)
    y = F.dense_forward(x, w, b)
    assert y.dtype == dtype
    x64, w64, b64, dy64 = (a.astype(np.float64) for a in (x, w, b, dy))
    assert_close(y, ref.dense_forward(x64, w64, b64), scale=shape[1] / 10 + 1)
    for got, want in zip(F.dense_backward(dy, x, w), ref.dense_backward(dy64, x64, w64)):
        assert got.dtype == dtype
        assert_close(got, want, scale=max(shape) / 10 + 1)


def test_without_bias_and_without_dx(rng):
    x, w, _ = make(rng, 4, 3, 2, np.float64)
    np.testing.assert_allclose(F.dense_forward(x, w), x @ w.T)
    dx, dw, db = F.dense_backward(np.ones((4, 2)), x, w, has_bias=False, need_dx=False)
    assert dx is None and db is None
    np.testing.assert_allclose(dw, np.ones((2, 4)) @ x)


def test_writes_into_out_buffers(rng):
    x, w, b = make(rng, 6, 5, 4, np.float32)
    y = np.empty((6, 4), np.float32)
    assert F.dense_forward(x, w, b, out=y) is y
    bufs = (np.empty_like(x), np.empty_like(w), np.empty_like(b))
    grads = F.dense_backward(np.ones_like(y), x, w, out=bufs)
    assert all(g is buf for g, buf in zip(grads, bufs))


@pytest.mark.parametrize("module", [ref, F], ids=["ref", "cpu"])
def test_gradients_finite_difference(rng, module):
    x, w, b = make(rng, 3, 4, 5, np.float64)
    r = upstream((3, 5), rng)
    dx, dw, db = module.dense_backward(r, x, w)
    check_gradients(lambda: float(np.sum(module.dense_forward(x, w, b) * r)),
                    {"x": x, "w": w, "b": b}, {"x": dx, "w": dw, "b": db})


def test_bad_input_is_rejected_with_a_clear_message(rng):
    x, w, b = make(rng, 4, 3, 2, np.float32)
    with pytest.raises(ValueError, match=r"x must be 2-D \(N, in_features\), got shape \(4, 3, 1"):
        F.dense_forward(x[..., None], w, b)
    with pytest.raises(ValueError, match="x has 5 features but w"):
        F.dense_forward(np.ones((4, 5), np.float32), w, b)
    with pytest.raises(ValueError, match=r"b must have shape \(2,\)"):
        F.dense_forward(x, w, np.ones(3, np.float32))
    with pytest.raises(TypeError, match="w has dtype float64 but the other arguments are float32"):
        F.dense_forward(x, w.astype(np.float64), b)
    with pytest.raises(TypeError, match="must have dtype float32 or float64, got int64"):
        F.dense_forward(np.ones((4, 3), np.int64), w, b)
    with pytest.raises(ValueError, match="must be C-contiguous"):
        F.dense_forward(np.ones((4, 6), np.float32)[:, ::2], w, b)
    with pytest.raises(ValueError, match="empty batch"):
        F.dense_forward(np.ones((0, 3), np.float32), w, b)
    with pytest.raises(TypeError, match="must be an array, got list"):
        F.dense_forward([[1.0, 2.0, 3.0]], w, b)
    with pytest.raises(ValueError, match=r"dy must have shape \(4, 2\)"):
        F.dense_backward(np.ones((4, 3), np.float32), x, w)
    with pytest.raises(ValueError, match=r"out must have shape \(4, 2\)"):
        F.dense_forward(x, w, b, out=np.empty((2, 4), np.float32))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("shape", [(64, 100, 100), (17, 33, 40), (3, 70, 50)])
def test_products_cut_into_blocks(rng, monkeypatch, shape, relu):
    """Large products run as blocks (forward: of the input features, summed; dw: of its rows;
    dx: of the output features, summed): the values of one GEMM, and the same bits from the
    serial variant, the parallel one, and the parallel one on one thread (the blocks follow
    the shapes only)."""
    n, i, o = shape
    x, w, b = make(rng, n, i, o, np.float32)
    dy = rng.standard_normal((n, o)).astype(np.float32)
    relu_y = dense_cpu.dense_forward(x, w, b, relu=True) if relu else None

    def run():
        return (dense_cpu.dense_forward(x, w, b, relu=relu),
                *dense_cpu.dense_backward(dy, x, w, relu_y=relu_y))

    monkeypatch.setattr(dense_cpu, "SPLIT_WORK", 1 << 62)  # one GEMM each
    whole = run()
    monkeypatch.setattr(dense_cpu, "SPLIT_WORK", 64)
    assert dense_cpu.gemm_parts(n * i * o, o) > 1
    monkeypatch.setattr(jit, "PARALLEL_MIN_WORK", 0)
    blocked = run()
    for got, want in zip(blocked, whole):
        assert_close(got, want, scale=max(shape) / 10 + 1)
    one_thread = on_one_thread(run)
    monkeypatch.setattr(jit, "PARALLEL_MIN_WORK", 1 << 62)
    for again in (one_thread, run()):
        for got, want in zip(again, blocked):
            np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("relu", [False, True])
def test_without_a_kernel_blas(rng, monkeypatch, relu):
    """Where the kernels cannot call NumPy's BLAS, np.matmul and small kernels give the same
    results."""
    x, w, b = make(rng, 17, 33, 9, np.float32)
    dy = rng.standard_normal((17, 9)).astype(np.float32)
    relu_y = dense_cpu.dense_forward(x, w, b, relu=True) if relu else None
    want = (dense_cpu.dense_forward(x, w, b, relu=relu),
            *dense_cpu.dense_backward(dy, x, w, relu_y=relu_y))
    monkeypatch.setattr(_blas, "AVAILABLE", False)
    got = (dense_cpu.dense_forward(x, w, b, relu=relu),
           *dense_cpu.dense_backward(dy, x, w, relu_y=relu_y))
    for a, e in zip(got, want):
        assert_close(a, e, scale=4)
