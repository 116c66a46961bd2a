"""ops/_simd.py: the register-blocked float32 x @ w.T and the 8x8-block transpose, against
NumPy in float64 (every tile shape and tail, no writes outside the output)."""

import numba
import numpy as np
import pytest

from nnkern.ops import _simd


@numba.njit
def _gemm_nt(x, w, out):
    _simd.gemm_nt(x, w, out)


@numba.njit
def _gemm_tn(a, b, out):
    _simd.gemm_tn(a, b, out)


@numba.njit
def _transpose(a, b):
    _simd.transpose_f32(a, b)


SHAPES = [(64, 784, 48), (64, 784, 52), (64, 100, 100), (8, 16, 16), (9, 7, 33), (17, 9, 49),
          (1, 1, 1), (3, 0, 5), (5, 3, 7), (23, 40, 10), (64, 52, 784), (9, 13, 32)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,k,width", SHAPES)
def test_gemm_nt_matches_numpy_and_writes_only_its_output(n, k, width, dtype):
    rng = np.random.default_rng(n * 1000 + k * 10 + width)
    x = rng.standard_normal((n, k)).astype(dtype)
    w = rng.standard_normal((width + 3, k)).astype(dtype)[1:width + 1]  # a row slice, as blocks
    frame = np.full((n + 2, width + 6), 7.0, dtype)
    out = frame[1:n + 1, 2:width + 2]   # rows contiguous, neighbours on every side
    _gemm_nt(x, w, out)
    want = x.astype(np.float64) @ w.T.astype(np.float64)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol * max(1.0, np.sqrt(k)))
    frame[1:n + 1, 2:width + 2] = 7.0
    assert np.all(frame == 7.0)          # nothing written outside out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,width,i_len", SHAPES)
def test_gemm_tn_matches_numpy_and_writes_only_its_output(n, width, i_len, dtype):
    rng = np.random.default_rng(n * 1000 + width * 10 + i_len)
    a = rng.standard_normal((n, width + 3)).astype(dtype)[:, 1:width + 1]  # strided rows
    b = rng.standard_normal((n, i_len)).astype(dtype)
    frame = np.full((width + 2, i_len + 6), 7.0, dtype)
    out = frame[1:width + 1, 2:i_len + 2]
    _gemm_tn(a, b, out)
    want = a.T.astype(np.float64) @ b.astype(np.float64)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, want, rtol=tol, atol=tol * max(1.0, np.sqrt(n)))
    frame[1:width + 1, 2:i_len + 2] = 7.0
    assert np.all(frame == 7.0)


def test_gemm_nt_float32_sums_each_element_over_k_in_order():
    # one FMA per k in float32, as a dot product: exactly representable inputs give exact sums
    x = np.arange(1, 9 * 20 + 1, dtype=np.float32).reshape(9, 20) % 7
    w = np.arange(1, 17 * 20 + 1, dtype=np.float32).reshape(17, 20) % 5
    out = np.empty((9, 17), np.float32)
    _gemm_nt(x, w, out)
    np.testing.assert_array_equal(out, (x.astype(np.int64) @ w.T.astype(np.int64)))


@pytest.mark.parametrize("rows,cols", [(1, 1), (3, 5), (8, 8), (9, 17), (48, 784), (20, 7)])
def test_transpose_matches_numpy(rows, cols):
    a = np.random.default_rng(rows * cols).standard_normal((rows, cols)).astype(np.float32)
    b = np.full((cols, rows + 3), np.nan, np.float32)
    _transpose(a, b[:, :rows])
    np.testing.assert_array_equal(b[:, :rows], a.T)
    assert np.isnan(b[:, rows:]).all()
