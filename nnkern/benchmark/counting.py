"""FLOP and byte counts of each benchmarked op, per pass (bench/README.md "Counting").

Bytes are the *compulsory* traffic: every array the pass must read is counted once and every
array it writes is counted once, at its element size (float32 4 B, dropout masks 1 B, max-pool
argmax 4 B, int64 labels 8 B), per-channel vectors included. Not counted: second reads by
multi-pass algorithms (batch norm reads x once for the statistics and again to normalise),
workspaces (im2col column buffers), write-allocate reads, and cache misses. GB/s derived from
these counts is therefore an effective bandwidth, a lower bound on the traffic really moved,
and an op can only reach 100% of the copy ceiling if it moves nothing beyond the minimum.

FLOPs count a multiply-add as 2 and a transcendental (exp, log, sqrt, division) as 1. They are
exact for conv and dense (the GEMM-equivalent 2·MACs plus bias adds) and conventional
approximations for the memory-bound ops (given per element next to each function); they only
place memory-bound ops on the roofline's x axis (arithmetic intensity = FLOP / byte).

Every function returns ``{pass: {"flops": int, "bytes": int}}`` with pass "forward",
"backward" or "update". Sizes are in elements; ``itemsize`` is the float element size.
"""

import math


def _counts(**passes):
    return {name: {"flops": int(f), "bytes": int(b)} for name, (f, b) in passes.items()}


def conv_out(size, kernel, stride=1, padding=0, dilation=1):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def conv2d(n, c, h, w, k, r, s, *, stride=1, padding=0, bias=True, need_dx=True, itemsize=4):
    """Convolution x (n, c, h, w) * w (k, c, r, s) -> y (n, k, oh, ow).

    forward: 2·N·K·C·R·S·OH·OW (+ N·K·OH·OW bias adds); reads x, w, b, writes y.
    backward: dW = 2·MACs, dX = 2·MACs (only when need_dx), db = N·K·OH·OW adds;
    reads dy, x, w, writes dx (need_dx), dw, db (bias).
    """
    oh, ow = conv_out(h, r, stride, padding), conv_out(w, s, stride, padding)
    macs = n * k * c * r * s * oh * ow
    nx, nw, ny = n * c * h * w, k * c * r * s, n * k * oh * ow
    nb = k if bias else 0
    fwd_f = 2 * macs + (ny if bias else 0)
    fwd_b = nx + nw + nb + ny
    bwd_f = 2 * macs * (2 if need_dx else 1) + (ny if bias else 0)
    bwd_b = ny + nx + nw + (nx if need_dx else 0) + nw + nb
    return _counts(forward=(fwd_f, fwd_b * itemsize), backward=(bwd_f, bwd_b * itemsize))


def dense(n, i, o, *, bias=True, need_dx=True, itemsize=4):
    """Linear y = x @ w.T + b, x (n, i), w (o, i).

    forward: 2·N·I·O (+ N·O); backward: dW 2·N·I·O, dX 2·N·I·O (need_dx), db N·O.
    """
    nb = o if bias else 0
    fwd_f = 2 * n * i * o + (n * o if bias else 0)
    fwd_b = n * i + o * i + nb + n * o
    bwd_f = 2 * n * i * o * (2 if need_dx else 1) + (n * o if bias else 0)
    bwd_b = n * o + n * i + o * i + (n * i if need_dx else 0) + o * i + nb
    return _counts(forward=(fwd_f, fwd_b * itemsize), backward=(bwd_f, bwd_b * itemsize))


def batch_norm(shape, *, itemsize=4):
    """Training-mode batch norm over (N, C) or (N, C, H, W), statistics per channel.

    forward ≈ 6 FLOP/element (sum and sum of squares: 3; (x - mean)·inv_std·gamma + beta: 3);
    reads x, gamma, beta, running mean/var; writes y, mean, inv_std, running mean/var.
    backward ≈ 8 FLOP/element (two channel sums: 3; dx = (dy - a - x̂·b)·gamma·inv_std: 5);
    reads dy, x, gamma, mean, inv_std; writes dx, dgamma, dbeta.
    """
    size, c = math.prod(shape), shape[1]
    return _counts(forward=(6 * size, (2 * size + 8 * c) * itemsize),
                   backward=(8 * size, (3 * size + 5 * c) * itemsize))


#: FLOP per element (forward, backward) of the element-wise activations
ACTIVATION_FLOPS = {"relu": (1, 1), "elu": (3, 2), "sigmoid": (3, 3), "tanh": (3, 3),
                    "softmax": (5, 4)}


def activation(op, size, *, itemsize=4):
    """Element-wise activation (softmax: over rows).

    forward reads x, writes y; backward reads dy and one saved array (x or y), writes dx.
    FLOP/element in ACTIVATION_FLOPS (exp counted as 1).
    """
    f_fwd, f_bwd = ACTIVATION_FLOPS[op]
    return _counts(forward=(f_fwd * size, 2 * size * itemsize),
                   backward=(f_bwd * size, 3 * size * itemsize))


def dropout(size, *, itemsize=4):
    """Inverted dropout with a uint8 mask: forward reads x, writes y and the mask; backward
    reads dy and the mask, writes dx. 1 FLOP/element each way (the scaling)."""
    return _counts(forward=(size, 2 * size * itemsize + size),
                   backward=(size, 2 * size * itemsize + size))


def pool2d(kind, n, c, h, w, kernel, stride, *, itemsize=4):
    """Max or average pooling, square window without padding.

    max: forward kernel² compares per output, reads x, writes y and int32 argmax; backward
    1 add per output, reads dy and argmax, writes dx (all of it: zeros included).
    avg: forward kernel² adds per output; backward 1 FLOP per input; reads/writes x/y sizes.
    """
    oh, ow = conv_out(h, kernel, stride), conv_out(w, kernel, stride)
    nin, nout = n * c * h * w, n * c * oh * ow
    if kind == "max":
        return _counts(forward=(kernel * kernel * nout, (nin + nout) * itemsize + 4 * nout),
                       backward=(nout, (nout + nin) * itemsize + 4 * nout))
    if kind == "avg":
        return _counts(forward=(kernel * kernel * nout, (nin + nout) * itemsize),
                       backward=(nin, (nout + nin) * itemsize))
    raise ValueError(f"pool2d: kind must be 'max' or 'avg', got {kind!r}")


def softmax_cross_entropy(n, c, *, itemsize=4, label_size=8):
    """Mean softmax cross-entropy of logits (n, c) with int64 labels.

    forward ≈ 5 FLOP/element (max, subtract, exp, sum, divide); reads logits and labels, writes
    the probabilities. backward 2 FLOP/element; reads probs and labels, writes dlogits.
    """
    size = n * c
    return _counts(forward=(5 * size, 2 * size * itemsize + n * label_size),
                   backward=(2 * size, 2 * size * itemsize + n * label_size))


#: (FLOP per parameter, arrays read, arrays written) of one optimizer step
OPTIMIZER_TRAFFIC = {"sgd_momentum": (4, 3, 2),   # read p, g, buf; write p, buf
                     "adam": (13, 4, 3)}          # read p, g, m, v; write p, m, v


def optimizer(rule, num_params, *, itemsize=4):
    """One optimizer step over ``num_params`` float parameters.

    SGD momentum: buf = μ·buf + g, p -= lr·buf (4 FLOP), 5 arrays touched.
    Adam: both moments, bias corrections, sqrt, divide, update (≈13 FLOP), 7 arrays touched.
    """
    flops, reads, writes = OPTIMIZER_TRAFFIC[rule]
    return _counts(update=(flops * num_params, (reads + writes) * num_params * itemsize))


def sgemm(m, n, k, *, itemsize=4):
    """C = A @ B, A (m, k), B (k, n): 2·m·n·k FLOP; reads A and B, writes C."""
    return {"flops": 2 * m * n * k, "bytes": (m * k + k * n + m * n) * itemsize}


def copy(size_bytes):
    """np.copyto of size_bytes: reads and writes each byte once (2 × size)."""
    return {"flops": 0, "bytes": 2 * size_bytes}
