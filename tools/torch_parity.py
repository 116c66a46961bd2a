"""Compare every nnkern layer with the matching torch.nn layer: same weights, float64.

    python tools/torch_parity.py [--trials 20] [--seed 0] [--device cpu|cuda]

For random odd configurations of each layer, copies torch's weights into the nnkern layer
(through ``load_state_dict`` with torch's keys, or ``.data`` assignment), runs forward and
backward on the same input and upstream gradient, and checks the output, the input gradient and
every parameter gradient to 1e-8 relative error; batch norm also after several training steps
(running statistics). A developer tool: needs PyTorch (never a dependency of nnkern).
"""

import argparse
import sys

import numpy as np
import torch

import nnkern
from nnkern import layers as L
from nnkern import losses
from nnkern.backend import to_host

TOL = 1e-8


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(np.linalg.norm(a), np.linalg.norm(b), 1e-300)
    return float(np.linalg.norm(a - b) / scale)


def odd(rng, lo, hi):
    return int(rng.integers(lo, hi + 1))


def configs(rng):
    """(name, nnkern layer, torch layer, input shape) for one random configuration of each."""
    n = odd(rng, 1, 5)
    c, h, w = odd(rng, 1, 5), odd(rng, 5, 11), odd(rng, 5, 11)
    k, kh, kw = odd(rng, 1, 6), odd(rng, 1, 4), odd(rng, 1, 4)
    stride, dil = (odd(rng, 1, 3), odd(rng, 1, 3)), (odd(rng, 1, 2), odd(rng, 1, 2))
    pad = (odd(rng, 0, 2), odd(rng, 0, 2))
    bias = bool(rng.integers(0, 2))
    fin, fout = odd(rng, 1, 17), odd(rng, 1, 13)
    yield ("Dense", L.Dense(fin, fout, bias=bias), torch.nn.Linear(fin, fout, bias=bias),
           (n, fin))
    if h + 2 * pad[0] >= dil[0] * (kh - 1) + 1 and w + 2 * pad[1] >= dil[1] * (kw - 1) + 1:
        yield ("Conv2D", L.Conv2D(c, k, (kh, kw), stride, pad, dil, bias=bias),
               torch.nn.Conv2d(c, k, (kh, kw), stride, pad, dil, bias=bias), (n, c, h, w))
    yield ("Conv2D same", L.Conv2D(c, k, (kh, kw), padding="same", dilation=dil),
           torch.nn.Conv2d(c, k, (kh, kw), padding="same", dilation=dil), (n, c, h, w))
    pk = (odd(rng, 1, 3), odd(rng, 1, 3))
    pp = (odd(rng, 0, pk[0] // 2), odd(rng, 0, pk[1] // 2))
    ps = (odd(rng, 1, 3), odd(rng, 1, 3))
    ceil = bool(rng.integers(0, 2))
    yield ("MaxPool2D", L.MaxPool2D(pk, ps, pp, ceil_mode=ceil),
           torch.nn.MaxPool2d(pk, ps, pp, ceil_mode=ceil), (n, c, h, w))
    cip = bool(rng.integers(0, 2))
    yield ("AvgPool2D", L.AvgPool2D(pk, ps, pp, ceil_mode=ceil, count_include_pad=cip),
           torch.nn.AvgPool2d(pk, ps, pp, ceil_mode=ceil, count_include_pad=cip), (n, c, h, w))
    yield ("GlobalAvgPool2D", L.GlobalAvgPool2D(),
           torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()), (n, c, h, w))
    mom = float(rng.uniform(0.05, 0.5))
    yield ("BatchNorm1D", L.BatchNorm1D(fin, momentum=mom),
           torch.nn.BatchNorm1d(fin, momentum=mom), (n + 1, fin))
    yield ("BatchNorm1D 3d", L.BatchNorm1D(c), torch.nn.BatchNorm1d(c), (n, c, w))
    yield ("BatchNorm2D", L.BatchNorm2D(c, eps=1e-3, momentum=mom),
           torch.nn.BatchNorm2d(c, eps=1e-3, momentum=mom), (n, c, h, w))
    yield ("BatchNorm2D cumulative", L.BatchNorm2D(c, momentum=None),
           torch.nn.BatchNorm2d(c, momentum=None), (n, c, h, w))
    yield ("Flatten", L.Flatten(), torch.nn.Flatten(), (n, c, h, w))
    slope = float(rng.uniform(0.01, 0.5))
    alpha = float(rng.uniform(0.2, 2.0))
    for name, ours, theirs in (
            ("ReLU", L.ReLU(), torch.nn.ReLU()),
            ("LeakyReLU", L.LeakyReLU(slope), torch.nn.LeakyReLU(slope)),
            ("PReLU", L.PReLU(), torch.nn.PReLU()),
            ("PReLU channels", L.PReLU(c, 0.1), torch.nn.PReLU(c, 0.1)),
            ("ELU", L.ELU(alpha), torch.nn.ELU(alpha)),
            ("SELU", L.SELU(), torch.nn.SELU()),
            ("Sigmoid", L.Sigmoid(), torch.nn.Sigmoid()),
            ("Tanh", L.Tanh(), torch.nn.Tanh()),
            ("Softmax", L.Softmax(), torch.nn.Softmax(dim=1))):
        yield name, ours, theirs, (n, c, h, w)
    yield ("Dropout eval", L.Dropout(0.3).eval(), torch.nn.Dropout(0.3).eval(), (n, c, h, w))


def to_device(a, device):
    return a if device == "cpu" else nnkern.to_device(a, device)


def check_layer(name, ours, theirs, shape, rng, device, assign_data, steps=3):
    theirs = theirs.double()
    # perturb BN/PReLU parameters off their init values so gradients are not trivial
    with torch.no_grad():
        for p in theirs.parameters():
            p.add_(torch.from_numpy(rng.standard_normal(tuple(p.shape)) * 0.3))
    state = {k: v.detach().numpy().copy() for k, v in theirs.state_dict().items()}
    if assign_data:  # parameter by parameter through .data (the layer becomes float64)
        for p in ours.parameters():
            p.data = state[ours.STATE_NAMES.get(p.name, p.name)]
    else:
        ours.load_state_dict(state)
    ours.to(device)
    training = theirs.training
    worst = 0.0
    for _ in range(steps):
        x = rng.standard_normal(shape)
        xt = torch.from_numpy(x).requires_grad_(True)
        for p in theirs.parameters():
            p.grad = None
        yt = theirs(xt)
        r = rng.standard_normal(tuple(yt.shape))
        (yt * torch.from_numpy(r)).sum().backward()
        y = ours.forward(to_device(x, device), training)
        dx = ours.backward(to_device(r, device))
        errors = {"y": rel(to_host(y), yt.detach().numpy()),
                  "dx": rel(to_host(dx), xt.grad.numpy())}
        torch_grads = {k: p.grad.numpy() for k, p in theirs.named_parameters()}
        for p in ours.parameters():
            key = ours.STATE_NAMES.get(p.name, p.name)
            errors["d" + key] = rel(to_host(p.grad), torch_grads[key])
        for key, value in theirs.state_dict().items():  # running statistics
            if "running" in key:
                errors[key] = rel(ours.state_dict()[key], value.numpy())
        worst = max(worst, *errors.values())
        if worst > TOL:
            return worst, errors
    return worst, None


def check_losses(rng):
    n, c = odd(rng, 1, 9), odd(rng, 2, 7)
    logits, labels = rng.standard_normal((n, c)), rng.integers(0, c, n)
    probs = rng.uniform(0.05, 0.95, (n, c))
    target = rng.uniform(0, 1, (n, c))
    margin = float(rng.uniform(0.5, 2))
    cases = [
        ("SoftmaxCrossEntropy", losses.SoftmaxCrossEntropy(), torch.nn.CrossEntropyLoss(),
         logits, labels),
        ("MSE", losses.MSE(), torch.nn.MSELoss(), logits, target),
        ("BinaryCrossEntropy", losses.BinaryCrossEntropy(), torch.nn.BCELoss(), probs, target),
        ("BCE logits", losses.BinaryCrossEntropy(from_logits=True), torch.nn.BCEWithLogitsLoss(),
         logits, target),
        ("Hinge", losses.Hinge(margin), torch.nn.MultiMarginLoss(margin=margin), logits, labels),
    ]
    for name, ours, theirs, pred, target in cases:
        pt = torch.from_numpy(pred).requires_grad_(True)
        value = theirs(pt, torch.from_numpy(target))
        value.backward()
        loss = ours.forward(pred, target)
        errors = {"loss": rel(loss, value.item()), "dpred": rel(ours.backward(), pt.grad.numpy())}
        yield name, max(errors.values()), errors


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    worst, failures = {}, []
    for trial in range(args.trials):
        for name, ours, theirs, shape in configs(rng):
            err, errors = check_layer(name, ours, theirs, shape, rng, args.device, trial % 2)
            worst[name] = max(worst.get(name, 0.0), err)
            if errors:
                failures.append((name, repr(ours), shape, errors))
        for name, err, errors in check_losses(rng):
            worst[name] = max(worst.get(name, 0.0), err)
            if err > TOL:
                failures.append((name, "", "", errors))
    for name, err in sorted(worst.items()):
        print(f"{name:24s} worst relative error {err:.2e} {'ok' if err <= TOL else 'FAIL'}")
    for failure in failures[:20]:
        print("FAIL", *failure)
    print(f"{len(failures)} failures over {args.trials} trials")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
