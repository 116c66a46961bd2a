"""Multi-tensor SGD: the kernel over a TensorTable, and SGD.step's multi-tensor path.

Both must give the bits of one sgd_update per tensor, so a run can switch between the paths
(e.g. resume from a state dict) without changing a result.
"""

import copy

import numpy as np
import pytest

import nnkern.optim as O
from nnkern.layers.base import Parameter
from nnkern.ops.update import cpu
from nnkern.optim import _multi

SIZES = [78400, 1, 100, 16384, 16385, 3, 10000]
OPTIONS = [dict(momentum=0.9, nesterov=True), dict(momentum=0.9, weight_decay=0.01, l1=0.001),
           dict(momentum=0.5, dampening=0.5), dict(momentum=0.0, weight_decay=0.1)]


def tensors(rng, dtype):
    return [[rng.standard_normal(n).astype(dtype) for n in SIZES] for _ in range(3)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("first", [True, False])
@pytest.mark.parametrize("kw", OPTIONS)
def test_multi_kernel_gives_the_bits_of_one_update_per_tensor(rng, variant, dtype, first, kw):
    ps, gs, bufs = tensors(rng, dtype)
    want = [(p.copy(), b.copy()) for p, b in zip(ps, bufs)]
    momentum = kw["momentum"] != 0
    for (p, b), g in zip(want, gs):
        cpu.sgd_update(p, g, b if momentum else None, lr=0.05, first=first, **kw)
    table = cpu.TensorTable(ps, gs, bufs if momentum else None)
    cpu.sgd_update_multi(table, lr=0.05, first=first, **kw)
    for (p_want, b_want), p, b in zip(want, ps, bufs):
        np.testing.assert_array_equal(p, p_want)
        np.testing.assert_array_equal(b, b_want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("slots", [1, 2, 3, 7])
def test_multi_kernel_bits_do_not_depend_on_its_slots(rng, dtype, slots):
    """The parallel kernel cuts every tensor into one run per thread; any cut gives the bits
    of the serial one-tensor kernel (the multi kernel goes parallel at sizes where the
    one-tensor kernel stays serial)."""
    ps, gs, bufs = tensors(rng, dtype)
    want = [(p.copy(), b.copy()) for p, b in zip(ps, bufs)]
    for (p, b), g in zip(want, gs):
        cpu._sgd_kernel.serial(p, g, b, 0.05, 0.9, 0.0, True, 0.01, 0.0, False)
    table = cpu.TensorTable(ps, gs, bufs)
    cpu._sgd_multi_kernel.parallel(table.addresses, table.sizes, table.proto, slots, 0.05,
                                   0.9, 0.0, True, 0.01, 0.0, False)
    for (p_want, b_want), p, b in zip(want, ps, bufs):
        np.testing.assert_array_equal(p, p_want)
        np.testing.assert_array_equal(b, b_want)


def test_tensor_table_checks_and_identity(rng):
    ps, gs, bufs = tensors(rng, np.float32)
    table = cpu.TensorTable(ps, gs, bufs)
    assert table.size == sum(SIZES) and table.holds(ps, gs, bufs)
    assert not table.holds(ps, gs, None) and not table.holds(ps, bufs, gs)
    assert not table.holds(ps[:-1], gs[:-1], bufs[:-1])
    assert not table.holds([p.copy() for p in ps], gs, bufs)
    with pytest.raises(ValueError, match="C-contiguous, of the dtype of the first"):
        cpu.TensorTable(ps, [g.astype(np.float64) for g in gs], bufs)
    with pytest.raises(ValueError, match="size of its column-0 peer"):
        cpu.TensorTable(ps, gs[::-1], None)


def make_model_params(rng, dtype=np.float32):
    shapes = [(100, 784), (100,), (10, 100), (10,), (3, 3, 2, 2)]
    return [Parameter(rng.standard_normal(s).astype(dtype), f"p{i}")
            for i, s in enumerate(shapes)]


def train(opt, params, grads):
    for step in grads:
        for p, g in zip(params, step):
            p.grad[...] = g
        opt.step()


@pytest.mark.parametrize("kw", [dict(lr=0.05, momentum=0.9, nesterov=True),
                                dict(lr=0.05, momentum=0.9, weight_decay=0.01, max_norm=2.0),
                                dict(lr=0.05, momentum=0.5, dampening=0.5, clip_norm=3.0),
                                dict(lr=0.1)])
def test_sgd_step_multi_path_matches_the_per_parameter_path(rng, variant, monkeypatch, kw):
    params = make_model_params(rng)
    twins = [Parameter(p.data.copy(), p.name) for p in params]
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in params] for _ in range(4)]
    calls = []
    real = _multi.sgd_step
    monkeypatch.setattr(_multi, "sgd_step", lambda opt: calls.append(1) or real(opt))
    train(O.SGD([{"params": params[:2], "lr_mult": 2.0}, {"params": params[2:]}], **kw),
          params, grads)
    monkeypatch.setattr(_multi, "sgd_step", lambda opt: False)  # per parameter only
    train(O.SGD([{"params": twins[:2], "lr_mult": 2.0}, {"params": twins[2:]}], **kw),
          twins, grads)
    assert len(calls) == 4
    for p, q in zip(params, twins):
        np.testing.assert_array_equal(p.data, q.data)


def test_sgd_multi_path_follows_rebinding_dtype_changes_and_resumes(rng):
    params = make_model_params(rng)
    grads = [[rng.standard_normal(p.shape).astype(np.float32) for p in params] for _ in range(6)]
    opt = O.SGD(params, lr=0.05, momentum=0.9)
    train(opt, params, grads[:2])
    assert opt._multi_cache  # the multi path ran
    table = opt._multi_cache[0][-1]
    sd = copy.deepcopy(opt.state_dict())
    saved = [p.data.copy() for p in params]
    train(opt, params, grads[2:])
    assert opt._multi_cache[0][-1] is table  # same arrays: the table is reused
    resumed = [Parameter(d.copy(), p.name) for d, p in zip(saved, params)]
    fresh = O.SGD(resumed, lr=0.05, momentum=0.9)
    fresh.load_state_dict(sd)
    train(fresh, resumed, grads[2:])
    for p, q in zip(params, resumed):
        np.testing.assert_array_equal(p.data, q.data)
    # a parameter's storage replaced: the state follows and the table is rebuilt
    params[0].grad = np.zeros_like(params[0].grad)
    opt.step()
    assert opt._multi_cache[0][-1] is not table
    # mixed dtypes in one group: the per-parameter path
    params[1]._set(params[1].data.astype(np.float64))
    params[1].grad[...] = 1.0
    before = params[1].data.copy()
    opt.step()
    assert params[1].data.dtype == np.float64 and not np.array_equal(params[1].data, before)
