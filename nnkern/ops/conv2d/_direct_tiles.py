"""Register-blocked float32 vector tiles of the direct 3x3 convolution (direct.py).

The direct kernels read every tap (c, i, j) of an output run p .. p+15 as one contiguous run of
the image's shifted copies, xs[c, j, p + i*OW .. p + i*OW + 15] (see direct.py). LLVM's own
vectorisation of those loops keeps one output vector per filter in flight and runs at about half
the FMA peak; these tiles keep a block of outputs in AVX-512 registers through all 9*C taps:

forward, F filters x V vectors of 16 output pixels (F x V accumulators):
    acc[f][v] = b[k0 + f]                                        (splat)
    for each tap t = (c, i, j):
        xv[v] = xs[c, j, p0 + 16 v + i*OW : +16]                 (V loads)
        acc[f][v] += wt[k0 + f, t] * xv[v]                       (F broadcasts, F x V FMAs)
    y[k0 + f, p0 + 16 v : +16] = acc[f][v]

dw, F filters x the 9 taps of one channel (9 F vector accumulators, plus F for db):
    for v in range(nv):
        d[f] = dy[k0 + f, 16 v : +16]                            (F loads)
        acc[f][t] += d[f] * xs[c, j, 16 v + i*OW : +16]          (9 loads, 9 F FMAs)
    sums[f, t] = horizontal sum of acc[f][t];  sums[f, 9] = sum of the d[f]  (with_db)

The forward adds the taps to the bias one FMA at a time in tap order; dw sums each lane's
products in p order, then the 16 lanes as a tree. Array arguments are float32 with contiguous
rows: xs (C, 3, S) an image's shifted copies, wt (K, 9 C) the filters as rows, y and dy (K, L)
one image's planes, sums (F, 10).
"""

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_LANES = 16
_F32, _I32, _I64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
_VEC = ir.VectorType(_F32, _LANES)


def _is_f32(*tys):
    return all(isinstance(t, types.Array) and t.dtype == types.float32 for t in tys)


def _const(n):
    return ir.Constant(_I64, n)


def _vec_at(builder, base, byte_offset):
    return builder.bitcast(builder.gep(base, [byte_offset]), _VEC.as_pointer())


def _load_f32(builder, base, byte_offset):
    return builder.load(builder.bitcast(builder.gep(base, [byte_offset]), _F32.as_pointer()))


def _splat(builder, scalar):
    undef = ir.Constant(_VEC, ir.Undefined)
    x = builder.insert_element(undef, scalar, ir.Constant(_I32, 0))
    return builder.shuffle_vector(x, undef, ir.Constant(ir.VectorType(_I32, _LANES),
                                                        [0] * _LANES))


def _fma(builder):
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_VEC, [_VEC, _VEC, _VEC]), "llvm.fma.v16f32")
    return lambda a, b, c: builder.call(fn, [a, b, c])


def _hsum(builder, v):
    # sum of the 16 lanes: halves added (8, 4, 2, 1 lanes)
    n = _LANES
    while n > 1:
        n //= 2
        lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n), list(range(n))))
        hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(_I32, n),
                                                      list(range(n, 2 * n))))
        v = builder.fadd(lo, hi)
    return builder.extract_element(v, ir.Constant(_I32, 0))


def _tap_bytes(builder, c, i, j, plane, row):
    # byte offset of tap (c, i, j) in xs: (c*3 + j) * plane + i * row  (plane, row in bytes;
    # xs's rows (c) are 3 planes long)
    return builder.add(builder.mul(_const(3 * c + j), plane), builder.mul(_const(i), row))


def _data(context, builder, aty, value):
    """(data as i8*, strides) of an array value."""
    arr = context.make_array(aty)(context, builder, value)
    return builder.bitcast(arr.data, ir.IntType(8).as_pointer()), arr.strides


def make_forward_tile(channels, filters, vecs):
    """The forward tile for C = channels, F = filters, V = vecs (see the module docstring)."""
    @intrinsic
    def tile(typingctx, xs, wt, b, y, k0, p0, ow):
        # y[k0:k0+F, p0:p0+16V] = b + the 9C taps of xs, weighted by wt[k0:k0+F]
        if not (_is_f32(xs, wt, b, y) and xs.ndim == 3 and wt.ndim == 2 and b.ndim == 1
                and y.ndim == 2):
            return None
        sig = types.void(xs, wt, b, y, types.intp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            xsv, wtv, bv, yv, k0v, p0v, owv = args
            fma = _fma(builder)
            xd, xst = _data(context, builder, signature.args[0], xsv)
            wd, wst = _data(context, builder, signature.args[1], wtv)
            bd, _ = _data(context, builder, signature.args[2], bv)
            yd, yst = _data(context, builder, signature.args[3], yv)
            plane, row = builder.extract_value(xst, 1), builder.mul(owv, _const(4))
            p_bytes = builder.mul(p0v, _const(4))
            filters_k = [builder.add(k0v, _const(f)) for f in range(filters)]
            w_rows = [builder.mul(k, builder.extract_value(wst, 0)) for k in filters_k]
            biases = [_load_f32(builder, bd, builder.mul(k, _const(4))) for k in filters_k]
            acc = [[_splat(builder, bias)] * vecs for bias in biases]  # each starts at b[k]
            for c in range(channels):
                for i in range(3):
                    for j in range(3):
                        start = builder.add(_tap_bytes(builder, c, i, j, plane, row), p_bytes)
                        xv = [builder.load(_vec_at(builder, xd,
                                                   builder.add(start, _const(64 * v))), align=4)
                              for v in range(vecs)]
                        t = 9 * c + 3 * i + j
                        for f in range(filters):
                            wf = _splat(builder, _load_f32(builder, wd,
                                                          builder.add(w_rows[f], _const(4 * t))))
                            acc[f] = [fma(wf, xv[v], acc[f][v]) for v in range(vecs)]
            for f in range(filters):
                y_row = builder.add(builder.mul(filters_k[f], builder.extract_value(yst, 0)),
                                    p_bytes)
                for v in range(vecs):
                    builder.store(acc[f][v], _vec_at(builder, yd,
                                                     builder.add(y_row, _const(64 * v))), align=4)
            return context.get_dummy_value()
        return sig, codegen
    return tile


def make_dw_tile(filters, with_db):
    """The dw tile for F = filters, with db's plane sums or not (see the module docstring)."""
    @intrinsic
    def tile(typingctx, xs, dy, sums, k0, c, nv, ow):
        # sums[f, 3i + j] = sum over p < 16 nv of dy[k0+f, p] * xs[c, j, p + i*OW];
        # sums[f, 9] = sum over those p of dy[k0+f, p] (with_db)
        if not (_is_f32(xs, dy, sums) and xs.ndim == 3 and dy.ndim == 2 and sums.ndim == 2):
            return None
        sig = types.void(xs, dy, sums, types.intp, types.intp, types.intp, types.intp)

        def codegen(context, builder, signature, args):
            xsv, dyv, sumsv, k0v, cv, nvv, owv = args
            fma = _fma(builder)
            xd, xst = _data(context, builder, signature.args[0], xsv)
            dd, dst = _data(context, builder, signature.args[1], dyv)
            sd, sst = _data(context, builder, signature.args[2], sumsv)
            plane, row = builder.extract_value(xst, 1), builder.mul(owv, _const(4))
            chan = builder.mul(cv, builder.extract_value(xst, 0))
            taps = [builder.add(chan, _tap_bytes(builder, 0, i, j, plane, row))
                    for i in range(3) for j in range(3)]
            d_rows = [builder.mul(builder.add(k0v, _const(f)), builder.extract_value(dst, 0))
                      for f in range(filters)]
            zero = ir.Constant(_VEC, [0.0] * _LANES)
            # accumulators as stack slots (mem2reg keeps them in registers through the loop)
            acc = [[cgutils.alloca_once_value(builder, zero) for _ in range(9 + with_db)]
                   for _ in range(filters)]
            with cgutils.for_range(builder, nvv) as loop:
                p_bytes = builder.mul(loop.index, _const(64))
                d = [builder.load(_vec_at(builder, dd, builder.add(d_rows[f], p_bytes)), align=4)
                     for f in range(filters)]
                for t in range(9):
                    xv = builder.load(_vec_at(builder, xd, builder.add(taps[t], p_bytes)),
                                      align=4)
                    for f in range(filters):
                        builder.store(fma(d[f], xv, builder.load(acc[f][t])), acc[f][t])
                if with_db:
                    for f in range(filters):
                        builder.store(builder.fadd(d[f], builder.load(acc[f][9])), acc[f][9])
            s_row = builder.extract_value(sst, 0)
            for f in range(filters):
                for t in range(9 + with_db):
                    off = builder.add(builder.mul(_const(f), s_row), _const(4 * t))
                    builder.store(_hsum(builder, builder.load(acc[f][t])),
                                  builder.bitcast(builder.gep(sd, [off]), _F32.as_pointer()))
            return context.get_dummy_value()
        return sig, codegen
    return tile
