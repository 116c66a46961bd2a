"""Dropout layers: inverted dropout (scale kept units by 1/(1-p) in training, identity in eval).

``p`` is the probability of dropping a unit (PyTorch and seed 000; seeds 001/002/004 write the
keep probability instead). Each training forward draws a fresh seed from the layer's random
generator; the mask comes from a counter-based hash of (seed, index), so CPU and CUDA draw the
same mask, and backward reuses it.
"""

from nnkern import _validate as v
from nnkern import functional as F
from nnkern.layers._common import check_input_rank, make_rng
from nnkern.layers.base import Layer

_SEED_BOUND = 2**63


class Dropout(Layer):
    """``Dropout(p=0.5)``: zero each element with probability p in training."""
    SPATIAL = False

    def __init__(self, p=0.5, *, rng=None):
        super().__init__()
        p = v.check_float(type(self).__name__, "p", p, 0.0, 1.0)
        self.config = dict(p=p)
        self.rng = make_rng(rng)

    def _forward(self, x, training):
        self._active = training and self.config["p"] > 0
        if not self._active:
            return x
        if self.SPATIAL:
            check_input_rank(self, x, (4,), "4-D (N, C, H, W)")
        seed = int(self.rng.integers(0, _SEED_BOUND))
        y, self._mask = F.dropout_forward(x, self.config["p"], seed, spatial=self.SPATIAL)
        return y

    def _backward(self, dy):
        if not self._active:
            return dy
        return F.dropout_backward(dy, self._mask, self.config["p"], spatial=self.SPATIAL)


class SpatialDropout2D(Dropout):
    """``SpatialDropout2D(p=0.5)``: drop whole channels (n, c) of a 4-D input (Tompson et al.;
    the all-convolutional net of seed 000 uses it)."""
    SPATIAL = True
