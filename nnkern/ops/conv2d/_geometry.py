"""Window geometry of a 2-D convolution, shared by every conv2d backend.

Turns the public ``stride`` / ``padding`` / ``dilation`` arguments (ints, pairs, or the padding
strings ``"valid"`` and ``"same"``) into one explicit record, so kernels only ever see plain ints.
Padding is kept per side (top, bottom, left, right) because ``"same"`` with an even span pads
one pixel more at the bottom/right, exactly as PyTorch does.
"""

from typing import NamedTuple

from nnkern import _validate as v


class ConvGeometry(NamedTuple):
    N: int   # batch
    C: int   # input channels
    H: int
    W: int
    K: int   # output channels
    KH: int  # kernel height
    KW: int  # kernel width
    OH: int
    OW: int
    sh: int  # stride
    sw: int
    pt: int  # zero padding: top, bottom, left, right
    pb: int
    pl: int
    pr: int
    dh: int  # dilation
    dw: int

    @property
    def pointwise(self):
        """A 1x1 kernel with stride 1 and no padding: the conv is a plain GEMM per image."""
        return (self.KH == self.KW == 1 and self.sh == self.sw == 1
                and self.pt == self.pb == self.pl == self.pr == 0)


def _padding(op, padding, kernel, dilation, stride):
    """((top, bottom), (left, right)) from an int, a pair, "valid" or "same"."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0), (0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"{op}: padding='same' needs stride 1, got stride {stride}")
            # total padding d*(k-1) keeps the size; PyTorch puts the odd pixel at the bottom/right
            sides = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                sides.append((total // 2, total - total // 2))
            return tuple(sides)
        raise ValueError(f"{op}: padding must be an int, a pair (h, w), 'valid' or 'same', "
                         f"got {padding!r}")
    ph, pw = v.pair(op, "padding", padding, minimum=0)
    return (ph, ph), (pw, pw)


def conv_geometry(op, x_shape, w_shape, stride=1, padding=0, dilation=1):
    """Validate the window options and compute the output size of conv2d.

    x_shape (N, C, H, W), w_shape (K, C, KH, KW); OH = floor((H + pt + pb - dh*(KH-1) - 1)/sh) + 1.
    Raises ValueError/TypeError naming ``op`` for bad options or a kernel larger than the padded
    input.
    """
    N, C, H, W = (int(n) for n in x_shape)
    K, _, KH, KW = (int(n) for n in w_shape)
    sh, sw = v.pair(op, "stride", stride, minimum=1)
    dh, dw = v.pair(op, "dilation", dilation, minimum=1)
    (pt, pb), (pl, pr) = _padding(op, padding, (KH, KW), (dh, dw), (sh, sw))
    # window_output_size pads both sides by one amount: shift the odd pixel into the size
    OH = v.window_output_size(op, H + pb - pt, KH, sh, pt, dh, axis="H")
    OW = v.window_output_size(op, W + pr - pl, KW, sw, pl, dw, axis="W")
    return ConvGeometry(N, C, H, W, K, KH, KW, OH, OW, sh, sw, pt, pb, pl, pr, dh, dw)
