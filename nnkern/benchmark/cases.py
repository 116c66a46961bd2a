"""The standard shape set: one ``Case`` per op and shape, with nnkern and PyTorch closures.

Shapes (batch 64, float32, seed 002's models): every convolution of VGG-10 (1 input channel,
32×32) plus its first layer with 3 channels and a 1×1 convolution; the MLP's dense layers
(784→100, 100→100, 100→10) and VGG-10's 512→512; batch norm 1-D and 2-D; max and average
pooling 2×2/2; ReLU, ELU, sigmoid (on VGG's first activation, and ReLU on the MLP's), softmax;
dropout; softmax cross-entropy; SGD-momentum and Adam steps over VGG-10's and the MLP's
parameters. ``QUICK`` holds tiny shapes of a few of them for smoke runs and tests.

A case's ``build(ctx)`` allocates its inputs and returns ``{contender: {pass: factory}}``:
contenders are "nnkern", "torch" (NCHW, the layout of nnkern's API) and, for convolutions,
"torch_cl" (channels_last, oneDNN's fastest plain layout). A factory returns the zero-argument
function that is timed; backward factories run one forward first and time the backward alone
(PyTorch: ``torch.autograd.grad(..., retain_graph=True)`` on that forward's graph, only over
the inputs whose gradients nnkern computes). PyTorch forwards run with autograd recording, as
in training: both frameworks' forwards save what their backward needs.
"""

from dataclasses import dataclass, field

import numpy as np

from nnkern.benchmark import counting
from nnkern.benchmark.torch_ref import tensor

GROUPS = ("conv", "dense", "bn", "pool", "act", "dropout", "loss", "optim")


@dataclass
class Case:
    group: str
    name: str
    shape: str
    kind: str                      # "compute" (quoted vs sgemm) or "memory" (vs copy)
    counts: dict                   # pass -> {"flops", "bytes"}
    build: object = field(repr=False)
    params: dict = field(default_factory=dict)

    @property
    def passes(self):
        return tuple(self.counts)


class Context:
    """Where a case's arrays live: nnkern's device, torch (or None) and a seeded generator."""

    def __init__(self, device="cpu", torch=None, seed=0):
        self.device = device
        self.torch = torch
        self.torch_device = device
        self.rng = np.random.default_rng(seed)

    def randn(self, *shape, scale=1.0):
        return (self.rng.standard_normal(shape, dtype=np.float32) * np.float32(scale))

    def nn(self, a):
        if self.device == "cpu":
            return a
        from nnkern.backend import to_device
        return to_device(a, "cuda")

    def t(self, a, requires_grad=False):
        return tensor(self.torch, a, self.torch_device, requires_grad)


def _timed(fn):
    """A factory for a function that needs no setup."""
    return lambda: fn


def _torch_grad(torch, forward, inputs, dy):
    """Backward factory for torch: one forward, then time autograd.grad over ``inputs``."""
    def factory():
        y = forward()
        return lambda: torch.autograd.grad(y, inputs, dy, retain_graph=True)
    return factory


# ------------------------------------------------------------------------------------ conv
def conv_case(name, n, c, h, w, k, r=3, padding=1, first=False, bias=True):
    """A convolution, stride 1. ``first``: the model's first layer (no input gradient)."""
    counts = counting.conv2d(n, c, h, w, k, r, r, padding=padding, bias=bias, need_dx=not first)
    oh, ow = counting.conv_out(h, r, 1, padding), counting.conv_out(w, r, 1, padding)

    def build(ctx):
        from nnkern import functional as F
        x, wt = ctx.randn(n, c, h, w), ctx.randn(k, c, r, r, scale=(2.0 / (c * r * r)) ** 0.5)
        b, dy = ctx.randn(k, scale=0.1), ctx.randn(n, k, oh, ow)
        xd, wd, bd, dyd = ctx.nn(x), ctx.nn(wt), ctx.nn(b) if bias else None, ctx.nn(dy)

        def fwd():
            return F.conv2d_forward(xd, wd, bd, 1, padding)

        def bwd_factory():
            fwd()
            return lambda: F.conv2d_backward(dyd, xd, wd, 1, padding, has_bias=bias,
                                             need_dx=not first)
        impls = {"nnkern": {"forward": _timed(fwd), "backward": bwd_factory}}
        torch = ctx.torch
        if torch is not None:
            for label, fmt in (("torch", torch.contiguous_format),
                               ("torch_cl", torch.channels_last)):
                xt = ctx.t(x).to(memory_format=fmt).requires_grad_(not first)
                wtt = ctx.t(wt).to(memory_format=fmt).requires_grad_(True)
                bt = ctx.t(b, True) if bias else None
                dyt = ctx.t(dy).to(memory_format=fmt)

                def tfwd(xt=xt, wtt=wtt, bt=bt):
                    return torch.nn.functional.conv2d(xt, wtt, bt, padding=padding)
                inputs = ([] if first else [xt]) + [wtt] + ([bt] if bias else [])
                impls[label] = {"forward": _timed(tfwd),
                                "backward": _torch_grad(torch, tfwd, inputs, dyt)}
        return impls

    shape = f"{n}x{c}x{h}x{w} -> {k}, {r}x{r} p{padding}" + (" (no dx)" if first else "")
    return Case("conv", name, shape, "compute", counts, build,
                dict(N=n, C=c, H=h, W=w, K=k, R=r, S=r, stride=1, padding=padding, bias=bias,
                     need_dx=not first))


# ----------------------------------------------------------------------------------- dense
def dense_case(name, n, i, o, first=False, bias=True):
    counts = counting.dense(n, i, o, bias=bias, need_dx=not first)

    def build(ctx):
        from nnkern import functional as F
        x, wt = ctx.randn(n, i), ctx.randn(o, i, scale=(2.0 / i) ** 0.5)
        b, dy = ctx.randn(o, scale=0.1), ctx.randn(n, o)
        xd, wd, bd, dyd = ctx.nn(x), ctx.nn(wt), ctx.nn(b) if bias else None, ctx.nn(dy)

        def fwd():
            return F.dense_forward(xd, wd, bd)

        def bwd_factory():
            fwd()
            return lambda: F.dense_backward(dyd, xd, wd, has_bias=bias, need_dx=not first)
        impls = {"nnkern": {"forward": _timed(fwd), "backward": bwd_factory}}
        torch = ctx.torch
        if torch is not None:
            xt, wtt = ctx.t(x, not first), ctx.t(wt, True)
            bt = ctx.t(b, True) if bias else None

            def tfwd():
                return torch.nn.functional.linear(xt, wtt, bt)
            inputs = ([] if first else [xt]) + [wtt] + ([bt] if bias else [])
            impls["torch"] = {"forward": _timed(tfwd),
                              "backward": _torch_grad(torch, tfwd, inputs, ctx.t(dy))}
        return impls

    shape = f"{n}x{i} -> {o}" + (" (no dx)" if first else "")
    return Case("dense", name, shape, "compute", counts, build,
                dict(N=n, I=i, O=o, bias=bias, need_dx=not first))


# -------------------------------------------------------------------------------------- bn
def bn_case(name, shape):
    counts = counting.batch_norm(shape)
    c = shape[1]

    def build(ctx):
        from nnkern import functional as F
        x, dy = ctx.randn(*shape), ctx.randn(*shape)
        gamma = np.ones(c, np.float32) + ctx.randn(c, scale=0.1)
        beta = ctx.randn(c, scale=0.1)
        xd, gd, bd, dyd = ctx.nn(x), ctx.nn(gamma), ctx.nn(beta), ctx.nn(dy)
        rm, rv = ctx.nn(np.zeros(c, np.float32)), ctx.nn(np.ones(c, np.float32))

        def fwd():
            return F.batch_norm_forward(xd, gd, bd, rm, rv, training=True)

        def bwd_factory():
            _, mean, inv_std = fwd()
            return lambda: F.batch_norm_backward(dyd, xd, gd, mean, inv_std, training=True)
        impls = {"nnkern": {"forward": _timed(fwd), "backward": bwd_factory}}
        torch = ctx.torch
        if torch is not None:
            xt, gt, bt = ctx.t(x, True), ctx.t(gamma, True), ctx.t(beta, True)
            rmt, rvt = ctx.t(np.zeros(c, np.float32)), ctx.t(np.ones(c, np.float32))

            def tfwd():
                return torch.nn.functional.batch_norm(xt, rmt, rvt, gt, bt, training=True)
            impls["torch"] = {"forward": _timed(tfwd),
                              "backward": _torch_grad(torch, tfwd, [xt, gt, bt], ctx.t(dy))}
        return impls

    return Case("bn", name, "x".join(map(str, shape)), "memory", counts, build,
                dict(shape=list(shape), training=True))


# ------------------------------------------------------------------------------------ pool
def pool_case(name, kind, n, c, h, w, kernel=2):
    counts = counting.pool2d(kind, n, c, h, w, kernel, kernel)
    oh, ow = counting.conv_out(h, kernel, kernel), counting.conv_out(w, kernel, kernel)

    def build(ctx):
        from nnkern import functional as F
        x, dy = ctx.randn(n, c, h, w), ctx.randn(n, c, oh, ow)
        xd, dyd = ctx.nn(x), ctx.nn(dy)
        if kind == "max":
            def fwd():
                return F.max_pool2d_forward(xd, kernel)

            def bwd_factory():
                _, argmax = fwd()
                return lambda: F.max_pool2d_backward(dyd, argmax, x.shape)
        else:
            def fwd():
                return F.avg_pool2d_forward(xd, kernel)

            def bwd_factory():
                fwd()
                return lambda: F.avg_pool2d_backward(dyd, x.shape, kernel)
        impls = {"nnkern": {"forward": _timed(fwd), "backward": bwd_factory}}
        torch = ctx.torch
        if torch is not None:
            xt = ctx.t(x, True)
            op = torch.nn.functional.max_pool2d if kind == "max" else \
                torch.nn.functional.avg_pool2d

            def tfwd():
                return op(xt, kernel)
            impls["torch"] = {"forward": _timed(tfwd),
                              "backward": _torch_grad(torch, tfwd, [xt], ctx.t(dy))}
        return impls

    return Case("pool", name, f"{n}x{c}x{h}x{w}, {kernel}x{kernel}/{kernel}", "memory", counts,
                build, dict(kind=kind, N=n, C=c, H=h, W=w, kernel=kernel, stride=kernel))


# ------------------------------------------------------------------------------ activation
_TORCH_ACT = {"relu": "relu", "elu": "elu", "sigmoid": "sigmoid", "softmax": "softmax"}


def act_case(name, op, shape):
    size = int(np.prod(shape))
    counts = counting.activation(op, size)

    def build(ctx):
        from nnkern import functional as F
        x, dy = ctx.randn(*shape), ctx.randn(*shape)
        xd, dyd = ctx.nn(x), ctx.nn(dy)
        forward, backward = getattr(F, f"{op}_forward"), getattr(F, f"{op}_backward")

        def fwd():
            return forward(xd)

        def bwd_factory():
            y = fwd()
            return lambda: backward(dyd, xd, y)
        impls = {"nnkern": {"forward": _timed(fwd), "backward": bwd_factory}}
        torch = ctx.torch
        if torch is not None:
            xt = ctx.t(x, True)
            if op == "softmax":
                def tfwd():
                    return torch.softmax(xt, 1)
            else:
                top = getattr(torch.nn.functional, _TORCH_ACT[op])

                def tfwd():
                    return top(xt)
            impls["torch"] = {"forward": _timed(tfwd),
                              "backward": _torch_grad(torch, tfwd, [xt], ctx.t(dy))}
        return impls

    return Case("act", name, "x".join(map(str, shape)), "memory", counts, build,
                dict(op=op, shape=list(shape)))


# --------------------------------------------------------------------------------- dropout
def dropout_case(name, shape, p=0.5):
    size = int(np.prod(shape))
    counts = counting.dropout(size)

    def build(ctx):
        from nnkern import functional as F
        x, dy = ctx.randn(*shape), ctx.randn(*shape)
        xd, dyd = ctx.nn(x), ctx.nn(dy)
        seed = [0]

        def fwd():
            seed[0] += 1
            return F.dropout_forward(xd, p, seed[0])

        def bwd_factory():
            _, mask = fwd()
            return lambda: F.dropout_backward(dyd, mask, p)
        impls = {"nnkern": {"forward": _timed(fwd), "backward": bwd_factory}}
        torch = ctx.torch
        if torch is not None:
            xt = ctx.t(x, True)

            def tfwd():
                return torch.nn.functional.dropout(xt, p, training=True)
            impls["torch"] = {"forward": _timed(tfwd),
                              "backward": _torch_grad(torch, tfwd, [xt], ctx.t(dy))}
        return impls

    return Case("dropout", name, "x".join(map(str, shape)) + f", p={p}", "memory", counts,
                build, dict(shape=list(shape), p=p))


# ------------------------------------------------------------------------------------ loss
def ce_case(name, n, c):
    counts = counting.softmax_cross_entropy(n, c)

    def build(ctx):
        from nnkern import functional as F
        logits = ctx.randn(n, c)
        labels = ctx.rng.integers(0, c, n).astype(np.int64)
        ld, yd = ctx.nn(logits), ctx.nn(labels)

        def fwd():
            return F.softmax_cross_entropy_forward(ld, yd)

        def bwd_factory():
            _, probs = fwd()
            return lambda: F.softmax_cross_entropy_backward(probs, yd)
        impls = {"nnkern": {"forward": _timed(fwd), "backward": bwd_factory}}
        torch = ctx.torch
        if torch is not None:
            lt, yt = ctx.t(logits, True), ctx.t(labels)

            def tfwd():
                return torch.nn.functional.cross_entropy(lt, yt)
            impls["torch"] = {"forward": _timed(tfwd),
                              "backward": _torch_grad(torch, tfwd, [lt], None)}
        return impls

    return Case("loss", name, f"{n}x{c}", "memory", counts, build, dict(N=n, C=c))


# ----------------------------------------------------------------------------------- optim
_MODELS = {"vgg10": lambda m: m.vgg10(in_channels=1, batch_norm=True),
           "mlp": lambda m: m.mlp()}


def optim_case(name, rule, model_name):
    from nnkern import models
    model = _MODELS[model_name](models)
    sizes = [p.size for p in model.parameters()]
    num = int(sum(sizes))
    counts = counting.optimizer(rule, num)
    del model

    def build(ctx):
        import nnkern
        from nnkern.backend import to_device
        model = _MODELS[model_name](nnkern.models)
        if ctx.device != "cpu":
            model.to(ctx.device)
        params = model.parameters()
        grads = [ctx.randn(*p.shape, scale=0.01) for p in params]
        for p, g in zip(params, grads):
            p.grad = to_device(g, ctx.device)
        if rule == "sgd_momentum":
            opt = nnkern.optim.SGD(params, lr=0.01, momentum=0.9)
        else:
            opt = nnkern.optim.Adam(params, lr=1e-3)
        impls = {"nnkern": {"update": _timed(opt.step)}}
        torch = ctx.torch
        if torch is not None:
            tparams = []
            for p, g in zip(params, grads):
                from nnkern.backend import to_host
                t = ctx.t(to_host(p.data), True)
                t.grad = ctx.t(g)
                tparams.append(t)
            if rule == "sgd_momentum":
                topt = torch.optim.SGD(tparams, lr=0.01, momentum=0.9)
            else:
                topt = torch.optim.Adam(tparams, lr=1e-3)
            impls["torch"] = {"update": _timed(topt.step)}
        return impls

    return Case("optim", name, f"{num} params in {len(sizes)} tensors", "memory", counts, build,
                dict(rule=rule, model=model_name, num_params=num, tensors=len(sizes)))


# ----------------------------------------------------------------------------- shape sets
def vgg10_convs(n=64, in_channels=1, side=32):
    """(name, C, H, K) of every convolution of seed 002's VGG-10."""
    out, c, h = [], in_channels, side
    for block, k in enumerate((64, 128, 256, 512, 512), start=1):
        out.append((f"conv{block}_1", c, h, k))
        out.append((f"conv{block}_2", k, h, k))
        c, h = k, h // 2
    return out


def standard_cases(n=64):
    cases = []
    for name, c, h, k in vgg10_convs(n):
        first = name == "conv1_1"
        cases.append(conv_case(f"vgg {name}" + (" C=1" if first else ""), n, c, h, h, k,
                               first=first))
        if first:
            cases.append(conv_case(f"vgg {name} C=3", n, 3, h, h, k, first=True))
    cases.append(conv_case("conv1x1 256->64", n, 256, 16, 16, 64, r=1, padding=0))
    cases += [dense_case("mlp fc1 784->100", n, 784, 100, first=True),
              dense_case("mlp fc2 100->100", n, 100, 100),
              dense_case("mlp fc4 100->10", n, 100, 10),
              dense_case("vgg fc 512->512", n, 512, 512)]
    cases += [bn_case("bn1d mlp", (n, 100)), bn_case("bn1d vgg fc", (n, 512)),
              bn_case("bn2d vgg block1", (n, 64, 32, 32)),
              bn_case("bn2d vgg block3", (n, 256, 8, 8))]
    cases += [pool_case("maxpool block1", "max", n, 64, 32, 32),
              pool_case("maxpool block3", "max", n, 256, 8, 8),
              pool_case("avgpool block1", "avg", n, 64, 32, 32)]
    big = (n, 64, 32, 32)
    cases += [act_case("relu block1", "relu", big), act_case("elu block1", "elu", big),
              act_case("sigmoid block1", "sigmoid", big), act_case("relu mlp", "relu", (n, 100)),
              act_case("softmax 10", "softmax", (n, 10)),
              act_case("softmax 1000", "softmax", (1024, 1000))]
    cases += [dropout_case("dropout block1", big), dropout_case("dropout fc", (n, 512))]
    cases += [ce_case("ce 10 classes", n, 10), ce_case("ce 1000 classes", 1024, 1000)]
    cases += [optim_case("sgd momentum vgg10", "sgd_momentum", "vgg10"),
              optim_case("adam vgg10", "adam", "vgg10"),
              optim_case("sgd momentum mlp", "sgd_momentum", "mlp"),
              optim_case("adam mlp", "adam", "mlp")]
    return cases


def quick_cases():
    """Tiny shapes, one or two per group: for smoke runs and tests (seconds, not minutes)."""
    return [conv_case("conv tiny first", 8, 3, 16, 16, 8, first=True),
            conv_case("conv tiny", 8, 8, 16, 16, 8),
            dense_case("mlp fc2 100->100", 64, 100, 100),
            bn_case("bn1d mlp", (64, 100)),
            pool_case("maxpool tiny", "max", 8, 8, 16, 16),
            act_case("relu mlp", "relu", (64, 100)),
            dropout_case("dropout mlp", (64, 100)),
            ce_case("ce 10 classes", 64, 10),
            optim_case("sgd momentum mlp", "sgd_momentum", "mlp")]


def select(cases, groups):
    unknown = sorted(set(groups) - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown kernel groups {unknown}; choose from {list(GROUPS)}")
    return [c for c in cases if c.group in groups]
