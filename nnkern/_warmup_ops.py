"""What ``nnkern.warmup`` runs: every op once on tiny inputs, per dtype.

Each exercise calls the public functional ops (the same entry points, so the same kernel
signatures as real use), once per option that selects another kernel or another compiled
signature (array rank, a bias or none, the 2x2 pooling kernels, ...). ``nnkern.warmup`` runs
each exercise once with every kernel forced serial and once forced parallel.
"""

import numpy as np

_SEED = 1234


def _rand(rng, shape, dtype, low=-1.0, high=1.0):
    return rng.uniform(low, high, shape).astype(dtype)


def dense(dtype):
    from nnkern import functional as F
    from nnkern.ops.dense import cpu
    rng = np.random.default_rng(_SEED)
    x, w, b = _rand(rng, (4, 6), dtype), _rand(rng, (3, 6), dtype), _rand(rng, 3, dtype)
    dy = _rand(rng, (4, 3), dtype)
    for bias in (b, None):
        F.dense_forward(x, w, bias)
        F.dense_backward(dy, x, w, has_bias=bias is not None)
    y = cpu.dense_forward(x, w, b, relu=True)  # the fused Dense -> ReLU of Sequential
    cpu.dense_forward(x, w, None, relu=True)
    for has_bias in (True, False):
        cpu.dense_backward(dy, x, w, has_bias=has_bias, relu_y=y)


def conv2d(dtype):
    from nnkern import functional as F
    rng = np.random.default_rng(_SEED)
    x = _rand(rng, (2, 3, 6, 6), dtype)
    # 3x3 same (stride-1 paths), strided, dilated, 1x1 pointwise
    for k, stride, pad, dil in ((3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 2, 2), (1, 1, 0, 1)):
        w = _rand(rng, (4, 3, k, k), dtype)
        for b in (_rand(rng, 4, dtype), None):
            y = F.conv2d_forward(x, w, b, stride, pad, dil)
            F.conv2d_backward(_rand(rng, y.shape, dtype), x, w, stride, pad, dil,
                              has_bias=b is not None)


def pool2d(dtype):
    from nnkern import functional as F
    rng = np.random.default_rng(_SEED)
    for shape in ((2, 3, 6, 6), (2, 3, 5, 7)):
        x = _rand(rng, shape, dtype)
        for args in ((2,), (3, 2, 1)):  # the 2x2 kernels and the general ones
            y, argmax = F.max_pool2d_forward(x, *args)
            F.max_pool2d_backward(_rand(rng, y.shape, dtype), argmax, x.shape)
            y = F.avg_pool2d_forward(x, *args)
            F.avg_pool2d_backward(_rand(rng, y.shape, dtype), x.shape, *args)
        y = F.global_avg_pool2d_forward(x)
        F.global_avg_pool2d_backward(_rand(rng, y.shape, dtype), x.shape)
    # 2x2 max pooling on rows of 32+ windows takes another loop
    x = _rand(rng, (1, 2, 2, 64), dtype)
    y, argmax = F.max_pool2d_forward(x, 2)
    F.max_pool2d_backward(_rand(rng, y.shape, dtype), argmax, x.shape)


def batch_norm(dtype):
    from nnkern import functional as F
    from nnkern.ops.batch_norm import cpu
    rng = np.random.default_rng(_SEED)
    # 1d, 2d with few channels (chunked sums) and with 8 (the channel-at-a-time kernels)
    for shape in ((5, 3), (2, 3, 4, 5), (2, 8, 2, 3)):
        x, dy = _rand(rng, shape, dtype), _rand(rng, shape, dtype)
        c = shape[1]
        g, b = _rand(rng, c, dtype, 0.5, 1.5), _rand(rng, c, dtype)
        rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
        for training in (True, False):
            _, mean, inv_std = F.batch_norm_forward(x, g, b, rm, rv, training=training)
            F.batch_norm_backward(dy, x, g, mean, inv_std, training=training)
            # the fused BatchNorm -> ReLU of Sequential
            _, mean, inv_std, coef = cpu.forward(x, g, b, rm, rv, training, 0.1, 1e-5, True)
            cpu.backward(dy, x, g, mean, inv_std, training, True, coef)
        F.batch_norm_forward(x, g, b)  # no running statistics


def activation(dtype):
    from nnkern import functional as F
    rng = np.random.default_rng(_SEED)
    for shape in ((4, 5), (2, 3, 2, 2)):
        x, dy = _rand(rng, shape, dtype), _rand(rng, shape, dtype)
        for op in ("relu", "leaky_relu", "elu", "selu", "sigmoid", "tanh", "softmax",
                   "log_softmax"):
            y = getattr(F, op + "_forward")(x)
            getattr(F, op + "_backward")(dy, x, y)
        for weight in (_rand(rng, 1, dtype), _rand(rng, shape[1], dtype)):
            F.prelu_forward(x, weight)
            F.prelu_backward(dy, x, weight)


def dropout(dtype):
    from nnkern import functional as F
    rng = np.random.default_rng(_SEED)
    x = _rand(rng, (2, 3, 2, 2), dtype)
    for spatial in (False, True):
        y, mask = F.dropout_forward(x, 0.5, 7, spatial=spatial)
        F.dropout_backward(_rand(rng, x.shape, dtype), mask, 0.5, spatial=spatial)


def shift_scale(dtype):
    from nnkern import functional as F
    from nnkern.ops.shift_scale import param_shape
    rng = np.random.default_rng(_SEED)
    for shape in ((4, 5), (2, 3, 2, 2)):
        x, dy = _rand(rng, shape, dtype), _rand(rng, shape, dtype)
        for mode in ("element", "channel", "layer"):
            p = _rand(rng, param_shape(shape, mode), dtype)
            F.shift_forward(x, p, mode)
            F.shift_backward(dy, p, mode)
            F.scale_forward(x, p, mode)
            F.scale_backward(dy, x, p, mode)


def loss(dtype):
    from nnkern import functional as F
    from nnkern import losses
    rng = np.random.default_rng(_SEED)
    x = _rand(rng, (4, 3), dtype)
    labels = np.array([0, 2, 1, 2])
    _, probs = F.softmax_cross_entropy_forward(x, labels)
    F.softmax_cross_entropy_backward(probs, labels)
    sce = losses.SoftmaxCrossEntropy()  # its own fast path
    sce.forward(x, labels)
    sce.backward()
    F.hinge_forward(x, labels)
    F.hinge_backward(x, labels)
    t = _rand(rng, x.shape, dtype, 0.0, 1.0)
    F.mse_forward(x, t)
    F.mse_backward(x, t)
    p = _rand(rng, x.shape, dtype, 0.1, 0.9)
    for pred, logits in ((p, False), (x, True)):
        F.binary_cross_entropy_forward(pred, t, from_logits=logits)
        F.binary_cross_entropy_backward(pred, t, from_logits=logits)


def update(dtype):
    from nnkern import optim
    from nnkern.layers import Dense
    rng = np.random.default_rng(_SEED)
    rules = [lambda ps: optim.SGD(ps, lr=0.1), lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
             lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, nesterov=True),
             lambda ps: optim.AdaGrad(ps, lr=0.1),
             lambda ps: optim.RMSProp(ps, lr=0.1),
             lambda ps: optim.RMSProp(ps, lr=0.1, momentum=0.9, centered=True),
             lambda ps: optim.Adadelta(ps), lambda ps: optim.Adam(ps, lr=0.1),
             lambda ps: optim.Adam(ps, lr=0.1, amsgrad=True), lambda ps: optim.AdamW(ps, lr=0.1),
             lambda ps: optim.Rprop(ps, lr=0.1),
             lambda ps: optim.SGD(ps, lr=0.1, max_norm=1.0, clip_norm=1.0)]
    for make in rules:
        layer = Dense(4, 3, rng=rng).astype(dtype)
        for p in layer.parameters():
            p.grad[...] = _rand(rng, p.shape, dtype)
        opt = make(layer.parameters())
        opt.step()
        opt.step()


def layers(dtype):
    """Fused Sequential steps and layer fast paths (a few forward/backward passes)."""
    from nnkern import layers as L
    from nnkern.model import Sequential
    rng = np.random.default_rng(_SEED)
    model = Sequential(L.Conv2D(2, 3, 3, padding=1, bias=False, rng=rng), L.BatchNorm2D(3),
                       L.ReLU(), L.MaxPool2D(2), L.Flatten(), L.Dense(12, 5, rng=rng), L.ReLU(),
                       L.Dense(5, 4, bias=False, rng=rng), L.BatchNorm1D(4), L.ReLU(),
                       L.Dense(4, 3, rng=rng)).astype(dtype)
    x = _rand(rng, (3, 2, 4, 4), dtype)
    for training in (True, True, False):
        y = model.forward(x, training=training)
        model.backward(_rand(rng, y.shape, dtype), need_input_grad=False)


EXERCISES = {"dense": dense, "conv2d": conv2d, "pool2d": pool2d, "batch_norm": batch_norm,
             "activation": activation, "dropout": dropout, "shift_scale": shift_scale,
             "loss": loss, "update": update, "layers": layers}
