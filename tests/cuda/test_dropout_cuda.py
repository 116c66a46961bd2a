"""CUDA dropout: masks bit-identical to the CPU masks for the same seed."""

import inspect

import numpy as np
import pytest

import nnkern
import nnkern.functional as F
import nnkern.ops.dropout as public
from nnkern.backend import to_host
from nnkern.ops.dropout import cuda as gpu
from nnkern.ops.dropout import ref

pytestmark = pytest.mark.cuda

CASES = [((37,), False), ((3, 5), False), ((2, 3, 2, 3), False), ((2, 3, 2, 3), True),
         ((1, 1, 1, 1), True), ((3, 5, 1, 3), True)]


def dev(a):
    return nnkern.to_device(a, "cuda")


def test_backend_exports_the_public_functions():
    for name in ("dropout_forward", "dropout_backward"):
        assert inspect.signature(getattr(gpu, name)) == inspect.signature(getattr(public, name))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p, seed", [(0.0, 1), (0.3, 42), (0.5, 2**63 - 1), (1.0, 7)])
def test_mask_and_values_are_bit_identical_to_cpu(rng, dtype, p, seed):
    for shape, spatial in CASES:
        x = rng.standard_normal(shape).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        y_cpu, mask_cpu = F.dropout_forward(x, p, seed, spatial=spatial)
        y, mask = F.dropout_forward(dev(x), p, seed, spatial=spatial)
        assert y.dtype == dtype and mask.dtype == np.uint8
        assert mask.shape == (shape[:2] if spatial else shape)
        np.testing.assert_array_equal(to_host(mask), mask_cpu)
        np.testing.assert_array_equal(to_host(mask), ref.keep_mask(seed, p, mask.shape))
        np.testing.assert_array_equal(to_host(y), y_cpu)  # one product each: same bits
        dx = F.dropout_backward(dev(dy), mask, p, spatial=spatial)
        np.testing.assert_array_equal(to_host(dx), F.dropout_backward(dy, mask_cpu, p,
                                                                      spatial=spatial))


def test_seeds_give_different_masks_and_the_same_seed_the_same(rng):
    x = dev(rng.standard_normal((4, 50)).astype(np.float32))
    a = to_host(F.dropout_forward(x, 0.5, 11)[1])
    b = to_host(F.dropout_forward(x, 0.5, 11)[1])
    c = to_host(F.dropout_forward(x, 0.5, 12)[1])
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert 0.3 < a.mean() < 0.7


def test_nan_inputs_stay_nan_where_dropped():
    x = np.full((2, 8), np.nan, np.float32)
    y, mask = F.dropout_forward(dev(x), 0.5, 3)
    assert np.isnan(to_host(y)).all()


def test_out_buffers(rng):
    x = rng.standard_normal((2, 3, 2, 3)).astype(np.float32)
    y_out, m_out = dev(np.zeros_like(x)), dev(np.zeros((2, 3), np.uint8))
    y, mask = F.dropout_forward(dev(x), 0.4, 5, spatial=True, out=(y_out, m_out))
    assert y is y_out and mask is m_out
    y_cpu, mask_cpu = F.dropout_forward(x, 0.4, 5, spatial=True)
    np.testing.assert_array_equal(to_host(m_out), mask_cpu)
    np.testing.assert_array_equal(to_host(y_out), y_cpu)
    dx_out = dev(np.zeros_like(x))
    assert F.dropout_backward(dev(x), mask, 0.4, spatial=True, out=dx_out) is dx_out


def test_bad_input_is_rejected(rng):
    x = dev(rng.standard_normal((2, 3)).astype(np.float32))
    mask = F.dropout_forward(x, 0.5, 1)[1]
    with pytest.raises(ValueError, match=r"dy on cuda; mask on cpu"):
        F.dropout_backward(x, to_host(mask), 0.5)
    with pytest.raises(TypeError, match=r"mask must have dtype uint8"):
        F.dropout_backward(x, dev(np.ones((2, 3), np.int32)), 0.5)
    with pytest.raises(ValueError, match=r"x on cuda; out mask on cpu"):
        F.dropout_forward(x, 0.5, 1, out=(None, np.empty((2, 3), np.uint8)))
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*63\)"):
        F.dropout_forward(x, 0.5, -1)
