"""Optimizers, regularizers and learning-rate schedules.

    from nnkern.optim import SGD, ReduceLROnPlateau
    opt = SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    for x, y in batches:
        loss.backward(...); model.backward(...)   # writes every parameter's .grad
        opt.step()

Every optimizer applies torch.optim's update rule with torch's defaults, so given the same
gradients a step matches PyTorch's (float64: to ~1e-15 relative). The seeds write several of
these rules in other, inconsistent forms (SEED_CATALOGUE §4, §12 items 2-4); how they map:

* Momentum: S0 (v ← ρv − g, p ← p + αv), S2 (v ← μv − η∇L, θ ← θ + v) and S3 are the
  classical form, which is ``SGD(momentum=μ)`` (torch keeps b = −v/η, the same trajectory for
  a constant η). S1's EMA form m ← μm + (1−μ)g takes steps smaller by (1 − μ): it is
  ``SGD(momentum=μ, dampening=μ)`` except that torch does not dampen the first step.
* ε: outside the square root, sqrt(v) + ε, for AdaGrad, RMSProp and Adam (as torch and S1's
  Adam; S1/S2/S3 put it inside elsewhere); inside for Adadelta, as in every source.
* Adam: with bias correction (p ← p − η/(1−β1^t) · m / (sqrt(v)/sqrt(1−β2^t) + ε)); no seed
  prints it. AdamW decouples weight decay (p ← p(1 − η·λ) before the step).
* Adadelta: p ← p − η·Δ; S1 eq 7.49 drops the minus sign, S2 conflates it with RMSProp.
* Rprop: torch's variant (no weight backtracking; the update is skipped after a sign change).

Common options (all optimizers, overridable per parameter group): ``weight_decay`` (L2, added
to the gradient as weight_decay · p; decoupled in AdamW), ``l1`` (adds l1 · sign(p); both
together give the elastic net), ``max_norm`` (after each step, rescale each output unit's
incoming weight vector of every parameter with ndim >= 2 to norm <= max_norm), and, for the
whole optimizer, ``clip_norm`` (``clip_grad_norm`` at the start of each step).

Parameter groups: ``params`` may be a list of dicts ``{"params": [...], "lr_mult": 2.0,
"weight_decay": 0.0}``; a group's learning rate is ``optimizer.lr * lr_mult`` (seed S0
trains biases at 2-16x the base rate), and ``optimizer.lr`` is what the schedules change.
"""

from nnkern.optim.adaptive import Adadelta, AdaGrad, Adam, AdamW, RMSProp, Rprop
from nnkern.optim.base import Optimizer, clip_grad_norm
from nnkern.optim.schedules import (
    ExponentialLR,
    LinearLR,
    LRSchedule,
    PowerLR,
    ReduceLROnPlateau,
    StepLR,
)
from nnkern.optim.sgd import SGD

__all__ = ["Optimizer", "SGD", "AdaGrad", "RMSProp", "Adadelta", "Adam", "AdamW", "Rprop",
           "clip_grad_norm", "LRSchedule", "StepLR", "ExponentialLR", "PowerLR", "LinearLR",
           "ReduceLROnPlateau"]
