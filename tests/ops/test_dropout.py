import numpy as np
import pytest

import nnkern.functional as F
from nnkern.ops.dropout import ref
from nnkern.testing import assert_close, check_gradients, upstream

MASK64 = (1 << 64) - 1


def splitmix64(state, count):
    """Vigna's splitmix64 generator in plain Python ints: the next ``count`` outputs."""
    out = []
    for _ in range(count):
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        out.append(z ^ (z >> 31))
    return out


def test_splitmix64_matches_the_published_sequence():
    # first outputs from state 1234567 (the reference test vector of the C implementation)
    assert splitmix64(1234567, 3) == [6457827717110365317, 3203168211198807973,
                                      9817491932198370423]


def test_reference_mask_is_the_documented_function():
    # key = first splitmix64 output from state seed; element i keeps iff the top 24 bits of
    # the i-th output from state key, / 2^24, are >= p
    for seed, p in [(0, 0.5), (1234567, 0.3), (2**63 - 1, 0.9)]:
        key = splitmix64(seed, 1)[0]
        u = np.array([(r >> 40) / 2**24 for r in splitmix64(key, 1000)])
        np.testing.assert_array_equal(ref.keep_mask(seed, p, (10, 100)),
                                      (u >= p).astype(np.uint8).reshape(10, 100))


def test_reference_scales_kept_values():
    x = np.arange(1.0, 9.0).reshape(2, 4)
    y, mask = ref.dropout_forward(x, 0.75, 7)
    np.testing.assert_array_equal(y, x * mask * 4.0)
    np.testing.assert_array_equal(ref.dropout_backward(np.ones_like(x), mask, 0.75), mask * 4.0)


CASES = [((1,), False), ((7, 13), False), ((2, 3, 4, 5), False), ((5, 3, 9), False),
         ((2, 3, 4, 5), True), ((1, 1, 1, 1), True), ((3, 17, 5, 7), True)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("p", [0.0, 0.3, 0.5, 1.0])
def test_forward_backward_match_reference(rng, variant, p, dtype):
    for shape, spatial in CASES:
        x = rng.standard_normal(shape).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        y, mask = F.dropout_forward(x, p, 42, spatial=spatial)
        want_y, want_mask = ref.dropout_forward(x, p, 42, spatial=spatial)
        assert y.dtype == dtype and mask.dtype == np.uint8
        assert mask.shape == (shape[:2] if spatial else shape)
        np.testing.assert_array_equal(mask, want_mask)  # bit-identical, any thread count
        assert_close(y, want_y)
        dx = F.dropout_backward(dy, mask, p, spatial=spatial)
        assert dx.dtype == dtype
        assert_close(dx, ref.dropout_backward(dy, mask, p, spatial=spatial))


def test_p_zero_is_identity_and_p_one_gives_zeros(rng):
    x = rng.standard_normal((4, 5, 3, 3)).astype(np.float32)
    for spatial in (False, True):
        y, mask = F.dropout_forward(x, 0.0, 3, spatial=spatial)
        np.testing.assert_array_equal(y, x)
        assert mask.all()
        y, mask = F.dropout_forward(x, 1.0, 3, spatial=spatial)
        assert not mask.any() and np.all(y == 0.0)
        dx = F.dropout_backward(np.ones_like(x), mask, 1.0, spatial=spatial)
        assert np.all(dx == 0.0)


def test_masks_depend_on_the_seed_only(rng):
    x = rng.standard_normal((8, 1000))
    m1 = F.dropout_forward(x, 0.5, 11)[1]
    np.testing.assert_array_equal(m1, F.dropout_forward(x * 2, 0.5, 11)[1])
    m2 = F.dropout_forward(x, 0.5, 12)[1]
    assert 0.4 < np.mean(m1 != m2) < 0.6  # independent masks differ in about half the places


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_kept_fraction_is_binomial(p):
    n = 1 << 20
    for seed in (0, 987654321):
        kept = F.dropout_forward(np.ones(n, np.float32), p, seed)[1].sum()
        sigma = np.sqrt(n * p * (1 - p))
        assert abs(kept - n * (1 - p)) < 5 * sigma
    spatial = F.dropout_forward(np.ones((1024, 256, 1, 2), np.float32), p, 5, spatial=True)[1]
    sigma = np.sqrt(spatial.size * p * (1 - p))
    assert abs(spatial.sum() - spatial.size * (1 - p)) < 5 * sigma


def test_spatial_masks_are_constant_over_the_channel(rng):
    x = rng.uniform(1.0, 2.0, (6, 8, 5, 4))  # no zeros: a zero in y means dropped
    y, mask = F.dropout_forward(x, 0.5, 99, spatial=True)
    kept = (y != 0).all(axis=(2, 3))
    dropped = (y == 0).all(axis=(2, 3))
    assert np.all(kept | dropped)
    np.testing.assert_array_equal(kept, mask.astype(bool))
    np.testing.assert_allclose(y[kept], 2.0 * x[kept])


@pytest.mark.parametrize("module", [ref, F], ids=["ref", "cpu"])
@pytest.mark.parametrize("spatial", [False, True])
def test_gradients_finite_difference(rng, module, spatial):
    x = rng.standard_normal((2, 3, 2, 3))
    r = upstream(x.shape, rng)
    mask = module.dropout_forward(x, 0.4, 5, spatial=spatial)[1]
    dx = module.dropout_backward(r, mask, 0.4, spatial=spatial)
    check_gradients(lambda: float(np.sum(module.dropout_forward(x, 0.4, 5, spatial=spatial)[0]
                                         * r)), {"x": x}, {"x": dx})


def test_writes_into_out_buffers(rng):
    x = rng.standard_normal((3, 4, 2, 2)).astype(np.float32)
    for spatial, mshape in [(False, x.shape), (True, (3, 4))]:
        bufs = (np.empty_like(x), np.empty(mshape, np.uint8))
        y, mask = F.dropout_forward(x, 0.5, 1, spatial=spatial, out=bufs)
        assert y is bufs[0] and mask is bufs[1]
        dx = np.empty_like(x)
        assert F.dropout_backward(x, mask, 0.5, spatial=spatial, out=dx) is dx


def test_bad_input_is_rejected_with_a_clear_message():
    x = np.ones((4, 3, 2, 2), np.float32)
    with pytest.raises(ValueError, match=r"dropout_forward: p must be in \[0.0, 1.0\], got 1.5"):
        F.dropout_forward(x, 1.5, 0)
    with pytest.raises(ValueError, match=r"p must be in \[0.0, 1.0\], got -0.1"):
        F.dropout_backward(x, np.ones(x.shape, np.uint8), -0.1)
    with pytest.raises(ValueError, match="p must be in"):
        F.dropout_forward(x, float("nan"), 0)
    with pytest.raises(ValueError, match=r"seed must be in \[0, 2\*\*63\), got -1"):
        F.dropout_forward(x, 0.5, -1)
    with pytest.raises(ValueError, match=r"seed must be in .*, got 9223372036854775808"):
        F.dropout_forward(x, 0.5, 2**63)
    with pytest.raises(TypeError, match="seed must be an int in .*, got float 1.0"):
        F.dropout_forward(x, 0.5, 1.0)
    with pytest.raises(TypeError, match="spatial must be True or False, got int"):
        F.dropout_forward(x, 0.5, 1, spatial=1)
    with pytest.raises(ValueError, match=r"x must be 4-D \(N, C, H, W\) for spatial dropout"):
        F.dropout_forward(np.ones((4, 3), np.float32), 0.5, 1, spatial=True)
    with pytest.raises(TypeError, match="x must have dtype float32 or float64, got int64"):
        F.dropout_forward(np.ones((4, 3), np.int64), 0.5, 1)
    with pytest.raises(ValueError, match="must be C-contiguous"):
        F.dropout_forward(np.ones((4, 6), np.float32)[:, ::2], 0.5, 1)
    with pytest.raises(ValueError, match="empty batch"):
        F.dropout_forward(np.ones((0, 3), np.float32), 0.5, 1)
    with pytest.raises(TypeError, match="mask must have dtype uint8"):
        F.dropout_backward(x, np.ones(x.shape, bool), 0.5)
    with pytest.raises(ValueError, match=r"mask must have shape \(4, 3\) \(\(N, C\) of the"):
        F.dropout_backward(x, np.ones(x.shape, np.uint8), 0.5, spatial=True)
    with pytest.raises(ValueError, match=r"mask must have shape \(4, 3, 2, 2\)"):
        F.dropout_backward(x, np.ones((4, 3), np.uint8), 0.5)
    with pytest.raises(ValueError, match="mask must be C-contiguous"):
        F.dropout_backward(x[:, :1].copy(), np.ones((4, 3, 2, 2), np.uint8)[:, :1], 0.5)
    with pytest.raises(ValueError, match=r"out y must have shape \(4, 3, 2, 2\)"):
        F.dropout_forward(x, 0.5, 1, out=(np.empty((4, 3), np.float32), None))
