"""CUDA losses against the CPU backend and the NumPy references; device-side range checks."""

import inspect

import numpy as np
import pytest

import nnkern
import nnkern.ops.loss as L
from nnkern.backend import to_host
from nnkern.ops.loss import cuda as gpu
from nnkern.ops.loss import ref
from nnkern.testing import assert_close

pytestmark = pytest.mark.cuda


def dev(a):
    return nnkern.to_device(a, "cuda")


def close_loss(got, want, dtype):
    assert isinstance(got, float)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    assert got == pytest.approx(want, rel=rtol, abs=rtol), (got, want)


def test_backend_exports_the_public_functions():
    for name, fn in inspect.getmembers(L, inspect.isfunction):
        if fn.__module__ == L.__name__ and not name.startswith("_"):
            assert inspect.signature(getattr(gpu, name)) == inspect.signature(fn), name


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 3), (5, 7), (3, 300)])  # batch 1; C > one block
def test_cross_entropy_and_hinge_match_cpu(rng, dtype, shape):
    n, c = shape
    x = (rng.standard_normal(shape) * 3).astype(dtype)
    labels = rng.integers(0, c, n)
    loss, probs = L.softmax_cross_entropy_forward(dev(x), dev(labels))
    want_loss, want_probs = L.softmax_cross_entropy_forward(x, labels)
    close_loss(loss, want_loss, dtype)
    assert probs.dtype == dtype
    assert_close(to_host(probs), want_probs)
    dx = L.softmax_cross_entropy_backward(probs, dev(labels))
    assert_close(to_host(dx), ref.softmax_cross_entropy_backward(want_probs, labels))
    close_loss(L.hinge_forward(dev(x), dev(labels), margin=0.8),
               L.hinge_forward(x, labels, margin=0.8), dtype)
    ds = L.hinge_backward(dev(x), dev(labels), margin=0.8)
    assert ds.dtype == dtype
    assert_close(to_host(ds), ref.hinge_backward(x, labels, margin=0.8))


def test_label_dtypes(rng):
    x = rng.standard_normal((4, 5))
    labels = np.array([4, 0, 2, 3])
    want = L.softmax_cross_entropy_forward(x, labels)[0]
    for dtype in (np.int32, np.uint8, np.uint64):
        lab = dev(labels.astype(dtype))
        close_loss(L.softmax_cross_entropy_forward(dev(x), lab)[0], want, np.float64)
        close_loss(L.hinge_forward(dev(x), lab), L.hinge_forward(x, labels), np.float64)
        assert_close(to_host(L.softmax_cross_entropy_backward(dev(x), lab)),
                     ref.softmax_cross_entropy_backward(x, labels))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(37,), (3, 5), (2, 3, 2, 3)])
def test_mse_and_bce_match_cpu(rng, dtype, shape):
    p = rng.uniform(0.02, 0.98, shape).astype(dtype)
    p.reshape(-1)[:2] = (0.0, 1.0)  # the clamped logs: finite loss, as torch
    t = rng.uniform(0, 1, shape).astype(dtype)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    close_loss(L.mse_forward(dev(x), dev(t)), L.mse_forward(x, t), dtype)
    assert_close(to_host(L.mse_backward(dev(x), dev(t))), ref.mse_backward(x, t))
    close_loss(L.binary_cross_entropy_forward(dev(p), dev(t)),
               L.binary_cross_entropy_forward(p, t), dtype)
    assert_close(to_host(L.binary_cross_entropy_backward(dev(p), dev(t))),
                 ref.binary_cross_entropy_backward(p, t))
    close_loss(L.binary_cross_entropy_forward(dev(x), dev(t), from_logits=True),
               L.binary_cross_entropy_forward(x, t, from_logits=True), dtype)
    assert_close(to_host(L.binary_cross_entropy_backward(dev(x), dev(t), from_logits=True)),
                 ref.binary_cross_entropy_backward(x, t, from_logits=True))


def test_partial_sums_over_several_blocks(rng, monkeypatch):
    # force several per-block partials (a launch plan for large arrays) on a small array
    monkeypatch.setattr(gpu, "_reduce_plan", lambda n: (3, 32))
    p = rng.uniform(0.1, 0.9, (7, 29))
    t = rng.uniform(0, 1, (7, 29))
    close_loss(L.mse_forward(dev(p), dev(t)), L.mse_forward(p, t), np.float64)
    close_loss(L.binary_cross_entropy_forward(dev(p), dev(t)),
               L.binary_cross_entropy_forward(p, t), np.float64)
    assert_close(to_host(L.binary_cross_entropy_backward(dev(p), dev(t))),
                 ref.binary_cross_entropy_backward(p, t))
    p[6, 28] = 2.0  # the last block's count is read too
    with pytest.raises(ValueError, match=r"pred must lie in \[0, 1\]"):
        L.binary_cross_entropy_backward(dev(p), dev(t))


def test_losses_are_deterministic(rng):
    x = rng.standard_normal((6, 11)).astype(np.float32)
    labels = dev(rng.integers(0, 11, 6))
    a = L.softmax_cross_entropy_forward(dev(x), labels)
    b = L.softmax_cross_entropy_forward(dev(x), labels)
    assert a[0] == b[0]
    np.testing.assert_array_equal(to_host(a[1]), to_host(b[1]))
    assert L.mse_forward(dev(x), dev(x * 0.5)) == L.mse_forward(dev(x), dev(x * 0.5))


def test_huge_and_nan_logits(rng):
    x = np.array([[1e4, -1e4, 0.0], [3.0, np.nan, 1.0]], np.float32)
    labels = np.array([1, 0])
    loss, probs = L.softmax_cross_entropy_forward(dev(x[:1]), dev(labels[:1]))
    close_loss(loss, 2e4, np.float32)
    loss, probs = L.softmax_cross_entropy_forward(dev(x), dev(labels))
    assert np.isnan(loss) and np.isnan(to_host(probs)[1]).all()


def test_out_buffers(rng):
    x = rng.standard_normal((3, 4))
    t = rng.uniform(0, 1, (3, 4))
    labels = dev(np.array([0, 3, 1]))
    for fn, args in [(L.softmax_cross_entropy_backward, (dev(x), labels)),
                     (L.hinge_backward, (dev(x), labels)),
                     (L.mse_backward, (dev(x), dev(t))),
                     (L.binary_cross_entropy_backward, (dev(t), dev(t)))]:
        out = dev(np.zeros((3, 4)))
        assert fn(*args, out=out) is out
        want = getattr(ref, fn.__name__)(*[to_host(a) for a in args])
        assert_close(to_host(out), want)


def same_error(op, cpu_args, cuda_args, **kw):
    """The CUDA backend raises the CPU backend's ValueError, message and all."""
    with pytest.raises(ValueError) as on_cpu:
        op(*cpu_args, **kw)
    with pytest.raises(ValueError) as on_gpu:
        op(*cuda_args, **kw)
    assert str(on_gpu.value) == str(on_cpu.value)
    return str(on_gpu.value)


def test_bad_labels_on_the_device_raise_the_cpu_error(rng):
    x = rng.standard_normal((4, 3))
    for labels in (np.array([0, 3, 1, 2]), np.array([0, 1, -1, 2]),
                   np.array([2, 200, 0, 1], np.uint8)):
        for op in (L.softmax_cross_entropy_forward, L.softmax_cross_entropy_backward,
                   L.hinge_forward, L.hinge_backward):
            message = same_error(op, (x, labels), (dev(x), dev(labels)))
            assert "labels must be class indices in [0, 3) (C = 3), got label" in message


def test_bce_values_outside_the_unit_interval_raise_the_cpu_error(rng):
    p = rng.uniform(0.1, 0.9, (2, 3))
    t = rng.uniform(0, 1, (2, 3))
    bad_p, bad_t = p.copy(), t.copy()
    bad_p[1, 2] = 1.5
    bad_t[0, 1] = np.nan
    for op in (L.binary_cross_entropy_forward, L.binary_cross_entropy_backward):
        message = same_error(op, (bad_p, t), (dev(bad_p), dev(t)))
        assert "pred must lie in [0, 1] (probabilities; pass from_logits=True" in message
        for from_logits in (False, True):
            message = same_error(op, (p, bad_t), (dev(p), dev(bad_t)), from_logits=from_logits)
            assert "target must lie in [0, 1]" in message
    # logits may be anything
    assert np.isfinite(L.binary_cross_entropy_forward(dev(bad_p), dev(t), from_logits=True))


def test_bad_arrays_are_rejected(rng):
    x = dev(rng.standard_normal((2, 3)))
    with pytest.raises(ValueError, match=r"logits on cuda; labels on cpu"):
        L.softmax_cross_entropy_forward(x, np.array([0, 1]))
    with pytest.raises(TypeError, match=r"labels must have an integer dtype"):
        L.hinge_forward(x, dev(np.array([0.0, 1.0])))
    with pytest.raises(ValueError, match=r"labels has 3 entries but the batch has 2 rows"):
        L.softmax_cross_entropy_backward(x, dev(np.array([0, 1, 2])))
