import numpy as np
import pytest

import nnkern.functional as F


def test_flatten_is_a_view_and_backward_restores_the_shape():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    y = F.flatten_forward(x)
    assert y.shape == (2, 60) and np.shares_memory(x, y)
    np.testing.assert_array_equal(y[1], x[1].ravel())
    dx = F.flatten_backward(y, x.shape)
    assert dx.shape == x.shape
    np.testing.assert_array_equal(dx, x)


def test_flatten_rejects_bad_input():
    with pytest.raises(ValueError, match=r"x must be at least 2-D \(N, ...\), got shape \(3,\)"):
        F.flatten_forward(np.ones(3, np.float32))
    with pytest.raises(ValueError, match="must be C-contiguous"):
        F.flatten_forward(np.ones((4, 3, 2), np.float32).transpose(0, 2, 1))
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 12\)"):
        F.flatten_backward(np.ones((2, 10), np.float32), (2, 3, 4))
