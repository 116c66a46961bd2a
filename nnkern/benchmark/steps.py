"""Whole training steps: forward, softmax cross-entropy, backward, SGD-momentum update.

Models (batch 64, float32): seed 002's MLP 3×100 with and without batch norm (28×28 input),
VGG-10 with and without batch norm (1 channel, 32×32), and ``models.small_cnn`` (BN, dropout
0.25, 28×28). The PyTorch model is built layer by layer from the nnkern model and loads its
state_dict, so both start from the same weights. Before timing, both take three steps on the
same batch with dropout switched off, and their losses must agree: the first loss (same
weights, same data: only float32 rounding differs) within ``LOSS_RTOL_FIRST``, the later ones
(after backward and update) within ``LOSS_RTOL_LATER``. The later tolerance is loose because
float32 rounding differences grow quickly in training: for VGG-10 with BN, float64 runs of both
frameworks agree to 1e-13 over three steps while float32 runs drift apart by ~1e-2 in loss at
step three (rounding amplified by large first updates on one batch). Dropout is then switched
back on for timing. nnkern skips the input gradient of the first layer, as torch does for an
input that does not require a gradient.
"""

import numpy as np

from nnkern.benchmark.stats import Timed, interleave, rate
from nnkern.benchmark.torch_ref import set_dropout, tensor, torch_model

LOSS_RTOL_FIRST = 1e-4
LOSS_RTOL_LATER = 5e-2
LR, MOMENTUM = 0.01, 0.9


def _models():
    from nnkern import models
    return {
        "mlp 3x100": (lambda: models.mlp(rng=0), (1, 28, 28)),
        "mlp 3x100 bn": (lambda: models.mlp(batch_norm=True, rng=0), (1, 28, 28)),
        "vgg10": (lambda: models.vgg10(in_channels=1, rng=0), (1, 32, 32)),
        "vgg10 bn": (lambda: models.vgg10(in_channels=1, batch_norm=True, rng=0), (1, 32, 32)),
        "small_cnn": (lambda: models.small_cnn(rng=0), (1, 28, 28)),
    }


STANDARD = ("mlp 3x100", "mlp 3x100 bn", "vgg10", "vgg10 bn", "small_cnn")
QUICK = ("mlp 3x100",)


def run_step(name, *, batch, ctx, clocks, repeat, target, warmup, log=print):
    """Time one model's training step in nnkern and (when available) PyTorch, interleaved."""
    import nnkern
    from nnkern.models import count_parameters
    build, sample_shape = _models()[name]
    model = build()
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, *sample_shape), dtype=np.float32)
    y = rng.integers(0, 10, batch).astype(np.int64)
    row = {"model": name, "batch": batch, "input": [batch, *sample_shape],
           "params": int(count_parameters(model)), "optimizer": f"SGD lr={LR} momentum={MOMENTUM}",
           "results": {}, "skipped": {}}
    torch = ctx.torch
    tmodel = None
    if torch is not None:
        try:
            tmodel = torch_model(torch, model, ctx.torch_device)
            tmodel.train()
        except (NotImplementedError, RuntimeError) as e:
            row["skipped"]["torch"] = f"could not mirror the model: {e}"
    if ctx.device != "cpu":
        model.to(ctx.device)
    xd, yd = ctx.nn(x), ctx.nn(y)
    loss = nnkern.losses.SoftmaxCrossEntropy()
    opt = nnkern.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    model.train()

    def nn_step():
        pred = model.forward(xd, training=True)
        value = loss.forward(pred, yd)
        model.backward(loss.backward(), need_input_grad=False)
        opt.step()
        return value

    t_step = None
    if tmodel is not None:
        xt, yt = tensor(torch, x, ctx.torch_device), tensor(torch, y, ctx.torch_device)
        topt = torch.optim.SGD(tmodel.parameters(), lr=LR, momentum=MOMENTUM)
        cross_entropy = torch.nn.functional.cross_entropy

        def t_step():
            topt.zero_grad(set_to_none=True)
            value = cross_entropy(tmodel(xt), yt)
            value.backward()
            topt.step()
            return value

    # first steps: compile/load time, and (with torch) the loss agreement check
    old_p = set_dropout(model, tmodel) if tmodel is not None else None
    clock = clocks["nnkern"]
    first = {}
    nn_losses = []
    for i in range(3):
        out = []
        t = clock.sample(lambda out=out: out.append(nn_step()), 1)
        nn_losses.append(float(out[0]))
        if i == 0:
            first["nnkern"] = t
    if tmodel is not None:
        t_losses = []
        for i in range(3):
            out = []
            t = clocks["torch"].sample(lambda out=out: out.append(t_step()), 1)
            t_losses.append(float(out[0].item()))
            if i == 0:
                first["torch"] = t
        set_dropout(model, tmodel, old_p)
        diffs = [abs(a - b) / max(abs(b), 1e-12) for a, b in zip(nn_losses, t_losses)]
        ok = diffs[0] <= LOSS_RTOL_FIRST and max(diffs[1:]) <= LOSS_RTOL_LATER
        diff = max(diffs)
        row["loss_check"] = {"nnkern": nn_losses, "torch": t_losses, "rel_diffs": diffs,
                             "max_rel_diff": diff, "rtol_first": LOSS_RTOL_FIRST,
                             "rtol_later": LOSS_RTOL_LATER, "ok": bool(ok),
                             "how": "3 steps on one batch from the same weights, dropout off"}
        if not ok:
            log(f"  WARNING {name}: nnkern and torch losses disagree (max rel. diff {diff:.2e}): "
                f"nnkern {nn_losses} torch {t_losses}")
    else:
        row["loss_check"] = None
    timers = {"nnkern": Timed(clock, nn_step, warmup=warmup, target=target, max_number=1000)}
    if t_step is not None:
        timers["torch"] = Timed(clocks["torch"], t_step, warmup=warmup, target=target,
                                max_number=1000)
    interleave(list(timers.values()), repeat)
    for label, timer in timers.items():
        stats = timer.result()
        stats["first_call"] = first[label]
        row["results"][label] = {"time": stats,
                                 "samples_per_s": rate(batch, stats["median"], 1.0)}
    if "torch" in row["results"]:
        row["ratio_vs_torch"] = (row["results"]["nnkern"]["time"]["median"]
                                 / row["results"]["torch"]["time"]["median"])
    return row
