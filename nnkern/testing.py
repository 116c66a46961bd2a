"""Helpers for testing kernels: finite-difference gradients and dtype-aware comparisons.

Gradient checks run in float64 with central differences,
    dL/dθ_i ≈ (L(θ + h e_i) - L(θ - h e_i)) / 2h,     error O(h²) + O(ε_machine / h),
on a scalar L = sum(y * r) with a fixed random r, so that dL/dy = r is the upstream gradient.
With h = 1e-6 in float64 the truncation and rounding errors are both ~1e-10 of the gradient, far
below the 1e-6 relative error the checks demand.
"""

import numpy as np

#: Tolerances for comparing a kernel against the float64 reference, per dtype of the kernel.
TOLERANCES = {
    np.dtype(np.float32): dict(rtol=2e-5, atol=2e-6),
    np.dtype(np.float64): dict(rtol=1e-11, atol=1e-12),
}


def rel_error(actual, expected):
    """Norm-wise relative error ||a - e|| / max(||a||, ||e||) (0 when both are 0)."""
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    if a.shape != e.shape:
        raise AssertionError(f"shape mismatch: {a.shape} vs {e.shape}")
    scale = max(np.linalg.norm(a), np.linalg.norm(e))
    return 0.0 if scale == 0 else float(np.linalg.norm(a - e) / scale)


def assert_close(actual, expected, dtype=None, scale=1.0, err_msg=""):
    """Element-wise comparison with the tolerance of ``dtype`` (default: actual's dtype).

    ``scale`` widens the tolerance for results that sum many float32 terms (e.g. the reduction
    length of a convolution's weight gradient / 100).
    """
    actual = np.asarray(actual)
    dtype = np.dtype(dtype or actual.dtype)
    tol = TOLERANCES[dtype]
    np.testing.assert_allclose(np.asarray(actual, np.float64), np.asarray(expected, np.float64),
                               rtol=tol["rtol"] * scale, atol=tol["atol"] * scale,
                               err_msg=err_msg)


def numerical_gradient(f, x, h=1e-6):
    """Central-difference gradient of the scalar function ``f()`` with respect to array ``x``.

    ``x`` is perturbed in place (and restored); ``f`` must read it. float64 only.
    """
    if x.dtype != np.float64:
        raise TypeError(f"numerical_gradient needs float64 arrays, got {x.dtype}")
    grad = np.zeros_like(x)
    flat, gflat = x.reshape(-1), grad.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + h
        f_plus = f()
        flat[i] = old - h
        f_minus = f()
        flat[i] = old
        gflat[i] = (f_plus - f_minus) / (2 * h)
    return grad


def check_gradients(loss, params, analytic, h=1e-6, max_rel_error=1e-6):
    """Compare analytic gradients with finite differences of ``loss()``.

    params: {name: float64 array read by loss()}; analytic: {name: gradient array}.
    Raises AssertionError naming the first parameter whose relative error exceeds the bound.
    Returns {name: relative error}.
    """
    errors = {}
    for name, x in params.items():
        numeric = numerical_gradient(loss, x, h)
        errors[name] = rel_error(analytic[name], numeric)
        if not errors[name] < max_rel_error:
            raise AssertionError(f"gradient of {name}: relative error {errors[name]:.3e} "
                                 f">= {max_rel_error:g}\nanalytic:\n{analytic[name]}\n"
                                 f"numeric:\n{numeric}")
    return errors


def upstream(shape, rng):
    """A fixed random upstream gradient r of the given shape, for L = sum(y * r)."""
    return rng.standard_normal(shape)


def on_one_thread(fn):
    """``fn()`` with Numba's parallel kernels on one thread (the count restored after): for
    tests that a kernel's bits do not depend on the thread count."""
    import numba
    threads = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        return fn()
    finally:
        numba.set_num_threads(threads)
