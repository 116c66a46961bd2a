"""Multi-tensor optimizer steps on the CPU: one kernel call per parameter group instead of one
per parameter.

For a small model the per-parameter loop of ``Optimizer.step`` (state look-up, a kernel
dispatch and the hyperparameter plumbing for each of its tensors) costs more than the update
arithmetic. From the second step on (the first allocates the state: the per-parameter path),
``sgd_step`` binds every parameter's state as ``Optimizer.step`` would (the same checks), then
updates each group with ``sgd_update_multi`` over a table of the group's arrays, built once and
rebuilt when any of them is replaced. The values are those of the per-parameter kernel, bit
for bit (same loops, same choice of serial or parallel variant), so a run may switch paths, e.g.
when resumed from a state dict, without changing any result. It returns False without
updating anything when it does not apply (a parameter on the GPU or zero-sized, mixed dtypes
in a group, a momentum buffer not allocated yet), and the caller then runs the per-parameter
step.
"""

from nnkern.backend import CPU
from nnkern.ops import _dispatch
from nnkern.optim.base import clip_grad_norm


def sgd_step(opt):
    """One step of SGD ``opt`` through the multi-tensor kernel; False when it does not apply."""
    if _dispatch._CPU_MODULE != "cpu":  # NNKERN_BACKEND=ref: the per-parameter reference path
        return False
    cache = opt.__dict__.setdefault("_multi_cache", {})
    plan = []
    for index, group in enumerate(opt.param_groups):
        h = opt._hyper(index, group)
        params = group["params"]
        hit = cache.get(index)
        if hit is not None and hit[0] == params and (h.momentum != 0.0) == (hit[4] is not None) \
                and _bound(opt, hit):
            plan.append((h, hit))
            continue
        states = []
        for p in params:
            st = opt.state.get(p)
            if st is None or st.data is not p.data or st.grad is not p.grad:
                if 0 in tuple(p.data.shape):
                    return False
                st = opt._sync(p, st)  # validates and binds, as Optimizer.step does
            if st.device != CPU:
                return False
            states.append(st)
        if not states:
            continue
        if any(st.dtype != states[0].dtype for st in states):
            return False
        momentum = h.momentum != 0.0
        if momentum and any(st.bufs[0] is None for st in states):
            return False  # a first step (buf = d): the per-parameter path allocates
        table = _dispatch.impl("nnkern.ops.update", CPU).TensorTable(
            [st.p for st in states], [st.g for st in states],
            [st.bufs[0] for st in states] if momentum else None)
        hit = cache[index] = (list(params), states, [st.data for st in states],
                              [st.grad for st in states],
                              [st.bufs[0] for st in states] if momentum else None, table)
        plan.append((h, hit))
    if opt.clip_norm is not None:
        clip_grad_norm(opt._all_params(), opt.clip_norm)
    update = _dispatch.impl("nnkern.ops.update", CPU).sgd_update_multi
    base_lr = opt.lr
    for h, (_, states, _, _, _, table) in plan:
        for st in states:
            st.step += 1
        update(table, lr=base_lr * h.lr_mult, momentum=h.momentum, dampening=h.dampening,
               nesterov=h.nesterov, weight_decay=h.weight_decay, l1=h.l1)
        if h.max_norm is not None:
            for st in states:
                if len(st.shape) >= 2:
                    st.backend.max_norm_update(st.data, h.max_norm)
    return True


def _bound(opt, hit):
    """The cached group is still bound: same state objects, same parameter storage, gradients
    and buffers (identity)."""
    params, states, datas, grads, bufs, _ = hit
    state = opt.state
    for i, p in enumerate(params):
        st = state.get(p)
        if st is not states[i] or p._data is not datas[i] or p.grad is not grads[i] \
                or st.data is not datas[i] or st.grad is not grads[i] \
                or (bufs is not None and st.bufs[0] is not bufs[i]):
            return False
    return True
