"""Per-element adaptive step sizes: AdaGrad, RMSProp, Adadelta, Adam, AdamW, Rprop.

Every rule is torch.optim's, with ε *outside* the square root (sqrt(v) + ε) where the seeds
mostly write sqrt(v + ε); Adadelta is the exception and has ε inside, in both. Throughout,
d = g + weight_decay · p + l1 · sign(p) (coupled L2 and L1 penalties; AdamW decouples the L2
part) and η = optimizer.lr · group["lr_mult"].
"""

from nnkern import _validate as v
from nnkern.optim.base import Optimizer, check_bool, check_pair


class AdaGrad(Optimizer):
    """``AdaGrad(params, lr=0.01, eps=1e-10, weight_decay=0, initial_accumulator_value=0,
    lr_decay=0, *, l1=0, max_norm=None, clip_norm=None)``: torch.optim.Adagrad.

        s = s + d²                       (s starts at initial_accumulator_value)
        p = p − η_t · d / (sqrt(s) + eps),   η_t = η / (1 + (t − 1) · lr_decay), t = 1, 2, ...

    Seeds S1 eq 7.46 / S2 eq 2.16 / S3 put ε inside the square root (sqrt(s + ε)).
    """

    STATE = ("sum",)
    HYPER = ("eps", "initial_accumulator_value", "lr_decay")

    def __init__(self, params, lr=0.01, eps=1e-10, weight_decay=0.0, initial_accumulator_value=0.0,
                 lr_decay=0.0, *, l1=0.0, max_norm=None, clip_norm=None):
        super().__init__(params, lr, dict(eps=eps,
                                          initial_accumulator_value=initial_accumulator_value,
                                          lr_decay=lr_decay, weight_decay=weight_decay, l1=l1,
                                          max_norm=max_norm), clip_norm=clip_norm)

    def _check(self, h, where):
        h["eps"] = v.check_float(where, "eps", h["eps"], 0.0)
        h["initial_accumulator_value"] = v.check_float(
            where, "initial_accumulator_value", h["initial_accumulator_value"], 0.0)
        h["lr_decay"] = v.check_float(where, "lr_decay", h["lr_decay"], 0.0)

    def _update(self, st, lr, h):
        s, _ = self._buffer(st, 0, h.initial_accumulator_value)
        clr = lr / (1 + (st.step - 1) * h.lr_decay)
        st.backend.adagrad_update(st.p, st.g, s, clr=clr, eps=h.eps, weight_decay=h.weight_decay,
                                  l1=h.l1)


class RMSProp(Optimizer):
    """``RMSProp(params, lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
    centered=False, *, l1=0, max_norm=None, clip_norm=None)``: torch.optim.RMSprop.

        v = alpha · v + (1 − alpha) · d²
        m = alpha · m + (1 − alpha) · d,  a = sqrt(v − m²) + eps     (centered)
        a = sqrt(v) + eps                                            (otherwise)
        b = momentum · b + d / a,  p = p − η · b                     (momentum > 0)
        p = p − η · d / a                                            (otherwise)

    Seeds S1 eq 7.47 / S2 eq 2.17 write sqrt(v + ε), with γ (S1, S3: 0.9) for alpha.
    """

    STATE = ("square_avg", "momentum_buffer", "grad_avg")
    HYPER = ("alpha", "eps", "momentum", "centered")

    def __init__(self, params, lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, *, l1=0.0, max_norm=None, clip_norm=None):
        super().__init__(params, lr, dict(alpha=alpha, eps=eps, momentum=momentum,
                                          centered=centered, weight_decay=weight_decay, l1=l1,
                                          max_norm=max_norm), clip_norm=clip_norm)

    def _check(self, h, where):
        h["alpha"] = v.check_float(where, "alpha", h["alpha"], 0.0, 1.0)
        h["eps"] = v.check_float(where, "eps", h["eps"], 0.0)
        h["momentum"] = v.check_float(where, "momentum", h["momentum"], 0.0)
        h["centered"] = check_bool(where, "centered", h["centered"])

    def _update(self, st, lr, h):
        square_avg, _ = self._buffer(st, 0)
        buf = self._buffer(st, 1)[0] if h.momentum > 0.0 else None
        grad_avg = self._buffer(st, 2)[0] if h.centered else None
        st.backend.rmsprop_update(st.p, st.g, square_avg, grad_avg, buf, lr=lr, alpha=h.alpha,
                                  eps=h.eps, weight_decay=h.weight_decay, l1=h.l1,
                                  momentum=h.momentum, centered=h.centered)


class Adadelta(Optimizer):
    """``Adadelta(params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0, *, l1=0, max_norm=None,
    clip_norm=None)``: torch.optim.Adadelta.

        v = rho · v + (1 − rho) · d²
        Δ = sqrt(u + eps) / sqrt(v + eps) · d
        u = rho · u + (1 − rho) · Δ²
        p = p − η · Δ

    Seed S1 eq 7.49 writes the step as +Δ (the minus sign is missing: that would climb the
    loss) and has no η (η = 1 here by default); S2 eq 2.17 conflates Adadelta with RMSProp.
    """

    STATE = ("square_avg", "acc_delta")
    HYPER = ("rho", "eps")

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, *, l1=0.0,
                 max_norm=None, clip_norm=None):
        super().__init__(params, lr, dict(rho=rho, eps=eps, weight_decay=weight_decay, l1=l1,
                                          max_norm=max_norm), clip_norm=clip_norm)

    def _check(self, h, where):
        h["rho"] = v.check_float(where, "rho", h["rho"], 0.0, 1.0)
        h["eps"] = v.check_float(where, "eps", h["eps"], 0.0)

    def _update(self, st, lr, h):
        square_avg, _ = self._buffer(st, 0)
        acc_delta, _ = self._buffer(st, 1)
        st.backend.adadelta_update(st.p, st.g, square_avg, acc_delta, lr=lr, rho=h.rho,
                                   eps=h.eps, weight_decay=h.weight_decay, l1=h.l1)


class Adam(Optimizer):
    """``Adam(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0, amsgrad=False, *,
    l1=0, max_norm=None, clip_norm=None)``: torch.optim.Adam, with bias correction.

        m = beta1 · m + (1 − beta1) · d
        v = beta2 · v + (1 − beta2) · d²
        v̂ = max(v̂, v)  and use v̂ below                              (amsgrad)
        p = p − η / (1 − beta1^t) · m / (sqrt(v) / sqrt(1 − beta2^t) + eps),   t = 1, 2, ...

    Seeds S1 eq 7.51 / S2 eq 2.18 print no bias correction (S2 only mentions it) and S2 puts
    ε inside the square root; this is the canonical form. The first step is
    η · d / (|d| + eps), i.e. η · sign(d) for eps → 0.
    """

    STATE = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    HYPER = ("betas", "eps", "amsgrad")
    DECOUPLED = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, l1=0.0, max_norm=None, clip_norm=None):
        super().__init__(params, lr, dict(betas=betas, eps=eps, amsgrad=amsgrad,
                                          weight_decay=weight_decay, l1=l1, max_norm=max_norm),
                         clip_norm=clip_norm)

    def _check(self, h, where):
        b1, b2 = check_pair(where, "betas", h["betas"])
        for i, b in enumerate((b1, b2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"{where}: betas[{i}] must be in [0, 1), got {b}")
        h["betas"] = (b1, b2)
        h["eps"] = v.check_float(where, "eps", h["eps"], 0.0)
        h["amsgrad"] = check_bool(where, "amsgrad", h["amsgrad"])

    def _update(self, st, lr, h):
        exp_avg, _ = self._buffer(st, 0)
        exp_avg_sq, _ = self._buffer(st, 1)
        vmax = self._buffer(st, 2)[0] if h.amsgrad else None
        beta1, beta2 = h.betas
        st.backend.adam_update(st.p, st.g, exp_avg, exp_avg_sq, vmax, lr=lr, beta1=beta1,
                               beta2=beta2, eps=h.eps, step=st.step, weight_decay=h.weight_decay,
                               l1=h.l1, amsgrad=h.amsgrad, decoupled=self.DECOUPLED)


class AdamW(Adam):
    """``AdamW(params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01, amsgrad=False,
    *, l1=0, max_norm=None, clip_norm=None)``: torch.optim.AdamW, Adam with decoupled weight
    decay: first p = p · (1 − η · weight_decay), then Adam's step without the L2 term in d (an
    ``l1`` penalty still enters d). Seed S3's decoupled form w ← (1 − ζ)(w + Δw) decays after
    the step instead of before, with ζ = η · weight_decay.
    """

    DECOUPLED = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01,
                 amsgrad=False, *, l1=0.0, max_norm=None, clip_norm=None):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, l1=l1, max_norm=max_norm,
                         clip_norm=clip_norm)


class Rprop(Optimizer):
    """``Rprop(params, lr=0.01, etas=(0.5, 1.2), step_sizes=(1e-6, 50), *, weight_decay=0,
    l1=0, max_norm=None, clip_norm=None)``: torch.optim.Rprop (Rprop without weight
    backtracking). Each element keeps its own step size Δ (starting at η) and the previous
    gradient d':

        Δ = clip(Δ · (eta+ if d·d' > 0, eta− if d·d' < 0, 1 otherwise), Δmin, Δmax)
        d = 0 where d·d' < 0      (no step right after a sign change; seed S1 eq 7.56)
        p = p − sign(d) · Δ,   d' = d

    η is read only at a parameter's first step (as torch): schedules have no effect after.
    """

    STATE = ("prev", "step_size")
    HYPER = ("etas", "step_sizes")

    def __init__(self, params, lr=0.01, etas=(0.5, 1.2), step_sizes=(1e-6, 50.0), *,
                 weight_decay=0.0, l1=0.0, max_norm=None, clip_norm=None):
        super().__init__(params, lr, dict(etas=etas, step_sizes=step_sizes,
                                          weight_decay=weight_decay, l1=l1, max_norm=max_norm),
                         clip_norm=clip_norm)

    def _check(self, h, where):
        etaminus, etaplus = check_pair(where, "etas", h["etas"])
        if not 0.0 < etaminus < 1.0 < etaplus < float("inf"):
            raise ValueError(f"{where}: etas must satisfy 0 < etaminus < 1 < etaplus, got "
                             f"({etaminus}, {etaplus})")
        lo, hi = check_pair(where, "step_sizes", h["step_sizes"])
        if not 0.0 <= lo <= hi < float("inf"):
            raise ValueError(f"{where}: step_sizes must satisfy 0 <= min <= max < inf, got "
                             f"({lo}, {hi})")
        h["etas"], h["step_sizes"] = (etaminus, etaplus), (lo, hi)

    def _update(self, st, lr, h):
        prev, _ = self._buffer(st, 0)
        step_size, _ = self._buffer(st, 1, lr)
        etaminus, etaplus = h.etas
        lo, hi = h.step_sizes
        st.backend.rprop_update(st.p, st.g, prev, step_size, etaminus=etaminus, etaplus=etaplus,
                                step_size_min=lo, step_size_max=hi,
                                weight_decay=h.weight_decay, l1=h.l1)
