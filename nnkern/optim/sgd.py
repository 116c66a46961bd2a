"""Stochastic gradient descent with optional (Nesterov) momentum."""

from nnkern import _validate as v
from nnkern.optim import _multi
from nnkern.optim.base import Optimizer, check_bool


class SGD(Optimizer):
    """``SGD(params, lr, momentum=0, nesterov=False, weight_decay=0, dampening=0, *, l1=0,
    max_norm=None, clip_norm=None)``: torch.optim.SGD's rule. With d the gradient plus the
    coupled penalties and η = lr · lr_mult:

        d = g + weight_decay · p + l1 · sign(p)
        b = d                                  at the first step (torch clones the gradient)
        b = momentum · b + (1 − dampening) · d later steps
        d = d + momentum · b  (nesterov)   or   d = b   (classical)
        p = p − η · d

    This is the classical momentum of seeds S0/S2/S3 (v ← μv − ηg, p ← p + v) with v = −ηb
    for a constant η. Seed S1's EMA form (m ← μm + (1−μ)g) is ``dampening=μ`` here, i.e. steps
    smaller by (1 − μ) except at the first step (torch does not dampen the first one).
    Nesterov follows Sutskever's reformulation as torch does (S2 eq 2.15 evaluates the gradient
    at p + μv; after the change of variables the update above is the same algorithm).
    """

    STATE = ("momentum_buffer",)
    HYPER = ("momentum", "dampening", "nesterov")

    def __init__(self, params, lr, momentum=0.0, nesterov=False, weight_decay=0.0, dampening=0.0,
                 *, l1=0.0, max_norm=None, clip_norm=None):
        super().__init__(params, lr, dict(momentum=momentum, dampening=dampening,
                                          nesterov=nesterov, weight_decay=weight_decay, l1=l1,
                                          max_norm=max_norm), clip_norm=clip_norm)

    def _check(self, h, where):
        h["momentum"] = v.check_float(where, "momentum", h["momentum"], 0.0)
        h["dampening"] = v.check_float(where, "dampening", h["dampening"], 0.0, 1.0)
        h["nesterov"] = check_bool(where, "nesterov", h["nesterov"])
        if h["nesterov"] and (h["momentum"] == 0.0 or h["dampening"] != 0.0):
            raise ValueError(f"{where}: nesterov needs momentum > 0 and dampening = 0, got "
                             f"momentum {h['momentum']} and dampening {h['dampening']}")

    def step(self):
        """One update of every parameter from its current ``.grad`` (on the CPU, from the
        second step on, one multi-tensor kernel call per parameter group)."""
        if not _multi.sgd_step(self):
            super().step()

    def _update(self, st, lr, h):
        buf, first = None, False
        if h.momentum != 0.0:
            buf, first = self._buffer(st, 0)
        st.backend.sgd_update(st.p, st.g, buf, lr=lr, momentum=h.momentum,
                              dampening=h.dampening, nesterov=h.nesterov,
                              weight_decay=h.weight_decay, l1=h.l1, first=first)
