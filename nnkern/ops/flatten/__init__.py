"""Flatten: (N, d1, d2, ...) -> (N, d1*d2*...), and back. A reshape of a contiguous array, so
it is a view on either device and needs no kernel (and no ref/cpu/cuda split)."""

from nnkern import _validate as v


def flatten_forward(x):
    """y = x viewed as (N, features). x must be at least 2-D and C-contiguous."""
    v.check_array("flatten_forward", "x", x, ndim=range(2, 33), layout="at least 2-D (N, ...)")
    return x.reshape(x.shape[0], -1)


def flatten_backward(dy, x_shape):
    """dx = dy viewed with the forward input's shape."""
    x_shape = tuple(int(n) for n in x_shape)
    v.check_array("flatten_backward", "dy", dy, ndim=2, layout="2-D (N, features)")
    features = 1
    for n in x_shape[1:]:
        features *= n
    v.check_shape("flatten_backward", "dy", dy, (x_shape[0], features),
                  f"the flattened x_shape {x_shape}")
    return dy.reshape(x_shape)
