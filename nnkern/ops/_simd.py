"""float32 GEMMs for the dense kernels' blocks, as explicit LLVM vector code.

Why: the dense layers' GEMM blocks are small and skinny (an MLP's first layer: 64x784 input,
48 or 52 output features per thread), where OpenBLAS's sgemm runs at about half its
large-matrix rate: x @ w.T for 64x784 -> 48 took 44-49 µs on one thread (NumPy's OpenBLAS
0.3.31, AVX-512), ~100 GFLOP/s against ~166 for 2048^3. The kernels below take 28-31 µs.

How: each tile of R rows and V vectors of 16 float32 columns keeps its R x V accumulators in
registers through the whole K loop (``_make_tile``, ``_tiles``: R x V = 8 x 3 or 6 x 4 = 24
accumulators, then 4-row tiles and single rows for the tails):

    for k in range(K):  acc[r][v] += a(r, k) * b[k, 16 v : 16 v + 16]   (fused multiply-add)

Per k: V vector loads, R broadcasts and R x V FMAs, so the FMA units set the pace (~28 µs for
the 150K vector FMAs of 64x784 -> 48 is about their peak here). K runs in blocks of 128 whose
slice of b stays in L1 while every row tile passes over it (accumulators stored and reloaded
between blocks): b then streams from L2 once instead of once per row tile (the first layer's
forward in the MLP step 54-56 -> 50 µs).
- ``gemm_nt``: out = x @ w.T. Either the weight block is transposed into wt (K, Wp), Wp = W
  rounded up to 16 with zero columns, a(r, k) = x[r, k], b = wt, into a padded scratch copied
  into out; or, when it takes fewer FMAs, the batch goes in the vectors: z.T = w @ x.T with x
  transposed (a 52-feature block then costs 52 x 4 vectors a row of x.T instead of 4 x 64),
  then z.T transposed into out. Transposes are 8x8 blocks of shuffles (``_transpose8``).
- ``gemm_tn``: out = a.T @ b (a weight gradient dz.T @ x): a(r, k) = a[k, r] broadcast against
  b's rows as they are, straight into out, when b's rows are whole vectors.
Each output element is the sum over k in order, one FMA at a time, in float32, as a BLAS dot
product is (BLAS's order inside its kernels differs: results agree to float32 rounding, not
bit for bit). LLVM vectors of 16 float32 are AVX-512 registers here; without AVX-512 LLVM
splits each into two AVX2 ones (the same values, slower).

float64 keeps BLAS (chosen by dtype at compile time), and so do blocks whose transposed copy
or b would exceed ``MAX_WT`` elements, and gemm_tn's rows not in whole vectors. x is taken in
panels of 64 rows, so that a large batch does not stream x from memory once per column chunk.
"""

import numpy as np
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from nnkern._jit import cpu_inline, cpu_serial
from nnkern.ops import _blas

_LANES = 16   # float32 lanes of one vector
_VECS = 3     # vectors of 16 columns per tile (tiles of 8 rows: 8 x 3 accumulators + 3 loads
              # + 1 broadcast fit AVX-512's 32 registers; 4 vectors go with 6 rows)
_KB = 128     # k per block: b's slice (128 x 3 or 4 vectors: 24-32 KiB) stays in L1 for all rows
_PANEL = 64   # rows of x per panel: the panel (64 x K) and a wt chunk (K x 48) stay in L2
#: Larger weight blocks go to BLAS, which blocks over K and packs: with wt beyond ~1 MiB (of
#: L2's 2) every panel streams it from memory again (256x1024 @ 1024x512: 2.9 ms vs 1.5 ms).
MAX_WT = 1 << 18  # elements of wt (K x Wp)


def _array_parts(context, builder, aty, value):
    """(data as i8*, row stride in bytes) of a 2-D array value."""
    arr = context.make_array(aty)(context, builder, value)
    data = builder.bitcast(arr.data, ir.IntType(8).as_pointer())
    return data, builder.extract_value(arr.strides, 0)


def _make_tile(rows, vecs):
    @intrinsic
    def tile(typingctx, a, b, out, r0, c0, k0, k_len, a_rs, a_ks, add):
        # out[r0:r0+rows, c0:c0+16 vecs] (+)= sum over k0 <= k < k0 + k_len of
        # a(r, k) * b[k, c0:c0+16 vecs], a(r, k) the float32 at byte offset r * a_rs + k * a_ks
        # of a's data (x[r, k] for x @ w.T, a[k, r] for a.T @ b); added to out's values when
        # add != 0. float32 arrays, b and out with contiguous rows
        if not all(isinstance(t, types.Array) and t.dtype == types.float32 and t.ndim == 2
                   for t in (a, b, out)):
            return None
        sig = types.void(a, b, out, *(types.intp,) * 8)

        def codegen(context, builder, signature, args):
            a_ty, b_ty, out_ty = signature.args[:3]
            av, bv, outv, r0v, c0v, k0, k_len, a_rs, a_ks, add = args
            f32, i32, i64 = ir.FloatType(), ir.IntType(32), ir.IntType(64)
            vec = ir.VectorType(f32, _LANES)
            vptr = vec.as_pointer()
            ad, _ = _array_parts(context, builder, a_ty, av)
            bd, bs = _array_parts(context, builder, b_ty, bv)
            od, os_ = _array_parts(context, builder, out_ty, outv)
            col = builder.mul(c0v, ir.Constant(i64, 4))
            a_start = builder.mul(k0, a_ks)
            a_rows = [builder.add(builder.mul(builder.add(r0v, ir.Constant(i64, r)), a_rs), a_start)
                      for r in range(rows)]

            def out_ptr(r, v):
                row = builder.mul(builder.add(r0v, ir.Constant(i64, r)), os_)
                off = builder.add(builder.add(row, col), ir.Constant(i64, 4 * _LANES * v))
                return builder.bitcast(builder.gep(od, [off]), vptr)
            fma = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vec, [vec, vec, vec]), "llvm.fma.v16f32")
            zero = ir.Constant(vec, [0.0] * _LANES)
            undef = ir.Constant(vec, ir.Undefined)
            splat = ir.Constant(ir.VectorType(i32, _LANES), [0] * _LANES)
            adding = builder.icmp_signed("!=", add, ir.Constant(i64, 0))
            # accumulators as stack slots (LLVM's mem2reg keeps them in registers), starting
            # from out's values when adding (out is read either way: in bounds, then ignored)
            acc = [[cgutils.alloca_once_value(
                builder, builder.select(adding, builder.load(out_ptr(r, v), align=4), zero))
                for v in range(vecs)] for r in range(rows)]
            with cgutils.for_range(builder, k_len) as loop:
                k = loop.index
                b_row = builder.add(builder.mul(builder.add(k0, k), bs), col)
                bk = [builder.load(builder.bitcast(
                    builder.gep(bd, [builder.add(b_row, ir.Constant(i64, 4 * _LANES * v))]),
                    vptr), align=4) for v in range(vecs)]
                k_off = builder.mul(k, a_ks)
                for r in range(rows):
                    x = builder.load(builder.bitcast(
                        builder.gep(ad, [builder.add(a_rows[r], k_off)]), f32.as_pointer()),
                        align=4)
                    x = builder.insert_element(undef, x, ir.Constant(i32, 0))
                    x = builder.shuffle_vector(x, undef, splat)  # broadcast
                    for v in range(vecs):
                        builder.store(builder.call(fma, [x, bk[v], builder.load(acc[r][v])]),
                                      acc[r][v])
            for r in range(rows):
                for v in range(vecs):
                    builder.store(builder.load(acc[r][v]), out_ptr(r, v), align=4)
            return context.get_dummy_value()
        return sig, codegen
    return tile


_T = {(r, v): _make_tile(r, v) for r, v in
      [(8, 1), (8, 2), (8, 3), (6, 4), (4, 1), (4, 2), (4, 3), (4, 4),
       (1, 1), (1, 2), (1, 3), (1, 4)]}
_t81, _t82, _t83, _t64 = _T[8, 1], _T[8, 2], _T[8, 3], _T[6, 4]
_t41, _t42, _t43, _t44 = _T[4, 1], _T[4, 2], _T[4, 3], _T[4, 4]
_t11, _t12, _t13, _t14 = _T[1, 1], _T[1, 2], _T[1, 3], _T[1, 4]


@cpu_inline
def _tile(a, b, out, r, c0, k0, kb, a_rs, a_ks, add, rows, vecs):
    # the compiled tile for (rows, vecs) at row r
    if rows == 8:
        if vecs == 3:
            _t83(a, b, out, r, c0, k0, kb, a_rs, a_ks, add)
        elif vecs == 2:
            _t82(a, b, out, r, c0, k0, kb, a_rs, a_ks, add)
        else:
            _t81(a, b, out, r, c0, k0, kb, a_rs, a_ks, add)
    elif rows == 6:
        _t64(a, b, out, r, c0, k0, kb, a_rs, a_ks, add)
    elif rows == 4:
        if vecs == 4:
            _t44(a, b, out, r, c0, k0, kb, a_rs, a_ks, add)
        elif vecs == 3:
            _t43(a, b, out, r, c0, k0, kb, a_rs, a_ks, add)
        elif vecs == 2:
            _t42(a, b, out, r, c0, k0, kb, a_rs, a_ks, add)
        else:
            _t41(a, b, out, r, c0, k0, kb, a_rs, a_ks, add)
    else:
        if vecs == 4:
            _t14(a, b, out, r, c0, k0, kb, a_rs, a_ks, add)
        elif vecs == 3:
            _t13(a, b, out, r, c0, k0, kb, a_rs, a_ks, add)
        elif vecs == 2:
            _t12(a, b, out, r, c0, k0, kb, a_rs, a_ks, add)
        else:
            _t11(a, b, out, r, c0, k0, kb, a_rs, a_ks, add)


@cpu_serial  # one compiled copy per argument types, called (not inlined: compile time)
def _tiles(a, b, out, r0, r1, c0, vecs, k_len, a_rs, a_ks):
    # rows r0:r1 of the column chunk at c0 (vecs <= 4 vectors), over K in blocks of _KB whose
    # slice of b (_KB x 16 vecs) stays in L1 while every row tile passes over it: tiles of 8
    # rows (6 rows for 4 vectors: 24 accumulators either way), then 4 rows, then single rows
    full = 6 if vecs == 4 else 8
    for k0 in range(0, max(k_len, 1), _KB):
        kb = min(_KB, k_len - k0)
        add = 1 if k0 > 0 else 0
        r = r0
        while r < r1:
            rows = full if r + full <= r1 else 4 if r + 4 <= r1 else 1
            _tile(a, b, out, r, c0, k0, kb, a_rs, a_ks, add, rows, vecs)
            r += rows


@intrinsic
def _transpose8(typingctx, a, i0, j0, b):
    # b[j0:j0+8, i0:i0+8] = a[i0:i0+8, j0:j0+8].T for float32 arrays with contiguous rows:
    # 8 row loads, 24 shuffles (pairs, then quads, then halves), 8 row stores
    if not all(isinstance(t, types.Array) and t.dtype == types.float32 and t.ndim == 2
               for t in (a, b)):
        return None
    sig = types.void(a, types.intp, types.intp, b)

    def codegen(context, builder, signature, args):
        av, i0v, j0v, bv = args
        i32, i64 = ir.IntType(32), ir.IntType(64)
        vec = ir.VectorType(ir.FloatType(), 8)
        ad, as_ = _array_parts(context, builder, signature.args[0], av)
        bd, bs = _array_parts(context, builder, signature.args[3], bv)
        four = ir.Constant(i64, 4)
        a_off = builder.add(builder.mul(i0v, as_), builder.mul(j0v, four))
        b_off = builder.add(builder.mul(j0v, bs), builder.mul(i0v, four))

        def row_ptr(base, off, stride, r):
            p = builder.gep(base, [builder.add(off, builder.mul(ir.Constant(i64, r), stride))])
            return builder.bitcast(p, vec.as_pointer())

        def sh(u, w, mask):
            return builder.shuffle_vector(u, w, ir.Constant(ir.VectorType(i32, 8), mask))
        rows = [builder.load(row_ptr(ad, a_off, as_, r), align=4) for r in range(8)]
        t = []
        for k in range(4):  # interleave rows 2k and 2k+1
            t.append(sh(rows[2 * k], rows[2 * k + 1], [0, 8, 1, 9, 4, 12, 5, 13]))
            t.append(sh(rows[2 * k], rows[2 * k + 1], [2, 10, 3, 11, 6, 14, 7, 15]))
        lo, hi = [0, 1, 8, 9, 4, 5, 12, 13], [2, 3, 10, 11, 6, 7, 14, 15]
        tt = [sh(t[0], t[2], lo), sh(t[0], t[2], hi), sh(t[1], t[3], lo), sh(t[1], t[3], hi),
              sh(t[4], t[6], lo), sh(t[4], t[6], hi), sh(t[5], t[7], lo), sh(t[5], t[7], hi)]
        out = [sh(tt[k], tt[k + 4], [0, 1, 2, 3, 8, 9, 10, 11]) for k in range(4)] \
            + [sh(tt[k], tt[k + 4], [4, 5, 6, 7, 12, 13, 14, 15]) for k in range(4)]
        for r in range(8):
            builder.store(out[r], row_ptr(bd, b_off, bs, r), align=4)
        return context.get_dummy_value()
    return sig, codegen


@cpu_inline
def transpose_f32(a, b):
    # b (C, R) = a (R, C).T, float32, contiguous rows: 8x8 blocks, the last block of each row
    # and column overlapping its neighbour (rewriting the same values)
    r_, c_ = a.shape
    if r_ < 8 or c_ < 8:
        for j in range(c_):
            for i in range(r_):
                b[j, i] = a[i, j]
        return
    for jb in range(0, c_, 8):
        j = min(jb, c_ - 8)
        for ib in range(0, r_, 8):
            _transpose8(a, min(ib, r_ - 8), j, b)


@cpu_inline
def _padded_transpose(a, padded):
    # a (R, C).T as a (C, padded) array, columns R:padded zero
    r_, c_ = a.shape
    t = np.empty((c_, padded), np.float32)
    transpose_f32(a, t[:, :r_])
    for i in range(c_):
        for j in range(r_, padded):
            t[i, j] = 0.0
    return t


def gemm_nt(x, w, out):
    """out (N, W) = x (N, K) @ w (W, K).T; arrays with contiguous rows, out not overlapping x
    or w. float32: the register-blocked kernel (see the module docstring); other dtypes: BLAS.
    Call from jitted code."""
    raise NotImplementedError("gemm_nt is called from Numba kernels")


@overload(gemm_nt)
def _gemm_nt(x, w, out):
    if x.dtype != types.float32:
        def blas(x, w, out):
            _blas.gemm(x, False, w, True, out, 0.0)
        return blas

    def simd(x, w, out):
        n, k = x.shape
        width = w.shape[0]
        if n == 0 or width == 0:
            return
        w_pad = (width + _LANES - 1) // _LANES * _LANES
        n_pad = (n + _LANES - 1) // _LANES * _LANES
        if n_pad * width < w_pad * n and k * n_pad <= MAX_WT:
            # fewer FMAs with the batch in the vectors: z.T = w @ x.T (64x784 -> 52: 52 x 4
            # vectors a row of x.T instead of 4 x 64; 48 features cost the same either way)
            xt = _padded_transpose(x, n_pad)
            zt = np.empty((width, n_pad), np.float32)
            vecs = n_pad // _LANES
            for v0 in range(0, vecs, 4):
                _tiles(w, xt, zt, 0, width, v0 * _LANES, min(4, vecs - v0), k, w.strides[0], 4)
            transpose_f32(zt[:, :n], out)
            return
        if k * w_pad > MAX_WT:
            _blas.gemm(x, False, w, True, out, 0.0)
            return
        wt = _padded_transpose(w, w_pad)
        acc = np.empty((n, w_pad), np.float32)
        vecs = w_pad // _LANES
        for r0 in range(0, n, _PANEL):  # row panels of x, each kept in cache for all chunks
            r1 = min(n, r0 + _PANEL)
            for v0 in range(0, vecs, _VECS):  # column chunks of wt, each serving the panel
                _tiles(x, wt, acc, r0, r1, v0 * _LANES, min(_VECS, vecs - v0), k,
                       x.strides[0], 4)
        for i in range(n):
            for j in range(width):
                out[i, j] = acc[i, j]
    return simd


def gemm_tn(a, b, out):
    """out (W, I) = a (N, W).T @ b (N, I) (a weight gradient: dz.T @ x); arrays with contiguous
    rows, out not overlapping a or b. float32 with I a multiple of 16: the register-blocked
    kernel, broadcasting a's entries against b's rows as they are (no transpose, no scratch);
    otherwise BLAS. Call from jitted code."""
    raise NotImplementedError("gemm_tn is called from Numba kernels")


@overload(gemm_tn)
def _gemm_tn(a, b, out):
    if a.dtype != types.float32:
        def blas(a, b, out):
            _blas.gemm(a, True, b, False, out, 0.0)
        return blas

    def simd(a, b, out):
        n, width = a.shape
        i_len = b.shape[1]
        if width == 0 or i_len == 0:
            return
        if i_len % _LANES != 0 or n * i_len > MAX_WT:
            # rows of b in whole vectors only (padded copies cost more than they save at
            # 64x48 -> 100: 6-7 µs vs BLAS's 4 µs)
            _blas.gemm(a, True, b, False, out, 0.0)
            return
        for v0 in range(0, i_len // _LANES, _VECS):  # chunks of b (n x 48), serving every row
            _tiles(a, b, out, 0, width, v0 * _LANES, min(_VECS, i_len // _LANES - v0), n, 4,
                   a.strides[0])
    return simd
