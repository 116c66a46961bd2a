"""PyTorch as the same-run reference: imported lazily, never a dependency of nnkern.

``load_torch`` returns (torch module or None, info dict); every comparison is skipped with the
reason recorded when torch is missing, disabled (``--no-torch``) or, for ``--device cuda``,
has no CUDA. ``torch_model`` rebuilds an nnkern ``Sequential`` layer by layer as a
``torch.nn.Sequential`` with the same indices, so nnkern's PyTorch-compatible state_dict loads
into it unchanged.
"""

import numpy as np


def load_torch(enabled=True, device="cpu"):
    """(torch or None, {"available", "reason", "version", "threads"})."""
    if not enabled:
        return None, {"available": False, "reason": "disabled by --no-torch", "version": None}
    try:
        import torch
    except ImportError as e:
        return None, {"available": False, "reason": f"torch is not importable ({e})",
                      "version": None}
    info = {"available": True, "reason": None, "version": torch.__version__}
    if device == "cuda":
        if not torch.cuda.is_available():
            return None, {"available": False, "version": torch.__version__,
                          "reason": "torch has no CUDA device (CPU-only build or no GPU)"}
        # compare against true float32 GEMMs, as nnkern's kernels are (NUMBA_NOTES §5.7)
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        info["tf32"] = False
        info["cudnn"] = torch.backends.cudnn.version()
    return torch, info


def tensor(torch, a, device="cpu", requires_grad=False):
    t = torch.from_numpy(np.ascontiguousarray(a)).to(device)
    if requires_grad:
        t.requires_grad_(True)
    return t


def torch_layer(torch, layer):
    """The torch.nn module equivalent to one nnkern layer."""
    nn = torch.nn
    name = type(layer).__name__
    c = getattr(layer, "config", {})
    if name == "Flatten":
        return nn.Flatten()
    if name == "Dense":
        return nn.Linear(c["in_features"], c["out_features"], bias=c["bias"])
    if name == "Conv2D":
        return nn.Conv2d(c["in_channels"], c["out_channels"], c["kernel_size"], c["stride"],
                         c["padding"], c["dilation"], bias=c["bias"])
    if name in ("BatchNorm1D", "BatchNorm2D"):
        cls = nn.BatchNorm1d if name == "BatchNorm1D" else nn.BatchNorm2d
        return cls(c["num_features"], eps=c["eps"], momentum=c["momentum"], affine=c["affine"],
                   track_running_stats=c["track_running_stats"])
    if name == "MaxPool2D":
        return nn.MaxPool2d(c["kernel_size"], c["stride"], c["padding"], c["dilation"],
                            ceil_mode=c["ceil_mode"])
    if name == "AvgPool2D":
        return nn.AvgPool2d(c["kernel_size"], c["stride"], c["padding"], ceil_mode=c["ceil_mode"],
                            count_include_pad=c["count_include_pad"])
    if name == "GlobalAvgPool2D":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    if name == "Dropout":
        return nn.Dropout(c["p"])
    if name == "SpatialDropout2D":
        return nn.Dropout2d(c["p"])
    simple = {"ReLU": nn.ReLU, "Sigmoid": nn.Sigmoid, "Tanh": nn.Tanh, "SELU": nn.SELU}
    if name in simple:
        return simple[name]()
    if name == "ELU":
        return nn.ELU(c["alpha"])
    if name == "LeakyReLU":
        return nn.LeakyReLU(c["negative_slope"])
    raise NotImplementedError(f"no PyTorch equivalent wired up for nnkern layer {name}")


def torch_model(torch, model, device="cpu"):
    """A torch.nn.Sequential mirroring ``model`` with the same weights and buffers."""
    tm = torch.nn.Sequential(*[torch_layer(torch, layer) for layer in model.layers])
    state = {k: torch.from_numpy(np.array(v)) for k, v in _host_state(model).items()}
    missing, unexpected = tm.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise RuntimeError(f"state_dict mismatch: missing {missing}, unexpected {unexpected}")
    return tm.to(device)


def _host_state(model):
    from nnkern.backend import to_host
    return {k: to_host(v) if hasattr(v, "shape") and v.shape != () else v
            for k, v in model.state_dict().items()}


def set_dropout(model, tmodel, p_values=None):
    """Set every dropout probability in both models to 0 (returns the old values), or restore
    them from ``p_values``. Used to compare losses deterministically before timing."""
    nn_drop = [layer for layer in model.layers if "p" in getattr(layer, "config", {})
               and type(layer).__name__ in ("Dropout", "SpatialDropout2D")]
    t_drop = [m for m in tmodel if hasattr(m, "p") and "Dropout" in type(m).__name__]
    old = [layer.config["p"] for layer in nn_drop]
    new = p_values if p_values is not None else [0.0] * len(nn_drop)
    for layer, m, p in zip(nn_drop, t_drop, new):
        layer.config["p"] = p
        m.p = p
    return old
