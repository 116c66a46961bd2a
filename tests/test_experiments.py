"""The ``train`` command, the experiment recipes and the example scripts (fast, no network).

The example scripts run in-process (runpy with a patched argv) at their smallest settings on
the embedded Fashion-MNIST subset; one end-to-end test trains on the full set when installed.
"""

import json
import os
import runpy
import sys

import numpy as np
import pytest

import nnkern
from nnkern import datasets, models
from nnkern.cli import main
from nnkern.datasets import loaders
from nnkern.experiments import (
    build_callbacks,
    build_model,
    build_optimizer,
    check_model_options,
    load_dataset,
    prepare_data,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
SMALL = ["--data", "fashion-mnist-small", "--no-progress"]


def full_fashion_mnist_available():
    try:
        datasets.load_fashion_mnist(allow_embedded=False)
    except FileNotFoundError:
        return False
    return True


# -- the command line --------------------------------------------------------------------------
def test_top_level_help_lists_train(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "bench" in out


def test_train_help(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--bn", "--no-bn", "--activation", "--variant", "--dropout",
                 "--epochs", "--batch-size", "--lr", "--optimizer", "--momentum",
                 "--weight-decay", "--schedule", "--early-stop", "--val-split", "--seed",
                 "--data", "--limit", "--out", "--device", "--threads", "--no-progress"):
        assert flag in out
    assert "seed 002" in out and "embedded" in out


@pytest.mark.parametrize("argv, message", [
    (["--model", "resnet"], "invalid choice"),
    (["--lr", "-1"], "expected a finite number > 0"),
    (["--epochs", "0"], "expected a positive integer"),
    (["--val-split", "1.5"], r"expected a number in \[0, 1\)"),
    (["--optimizer", "lbfgs"], "invalid choice"),
    (["--bn", "--no-bn"], "not allowed with argument"),
])
def test_train_rejects_bad_options(capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        main(["train", *argv])
    assert e.value.code == 2
    assert __import__("re").search(message, capsys.readouterr().err)


@pytest.mark.parametrize("argv, message", [
    (["--variant", "lsh"], "--variant applies to seed 000's allconv and mlp24"),
    (["--model", "allconv", "--variant", "nope"], "unknown variant 'nope'"),
    (["--model", "allconv", "--activation", "elu"], "uses ReLU only"),
    (["--model", "mlp24", "--bn", "--variant", "lsh"], "contradicts --variant"),
    (["--init", "weird"], "unknown init 'weird'"),
    (["--width", "0.5"], "--width applies to allconv and mlp24"),
    (["--data", "/no/such/dir"], "neither a known data set"),
    (["--device", "cuda"], "no CUDA device"),
    (["--threads", "999"], "--threads 999: at most"),
])
def test_train_reports_bad_combinations(capsys, argv, message):
    if "cuda" in argv and nnkern.cuda_available():
        pytest.skip("a CUDA device is available")
    assert main(["train", *argv, "--out", "unused"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("python -m nnkern train: error:") and message in err


def _check_outputs(out, model_type):
    for name in ("history.json", "history.png", "model.npz", "result.json"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    history = nnkern.History.from_json(os.path.join(out, "history.json"))
    assert history.epochs_completed == 1 and len(history["val_accuracy"]) == 1
    model = nnkern.load(os.path.join(out, "model.npz"))
    assert any(type(layer).__name__ == model_type for layer in model)
    with open(os.path.join(out, "result.json")) as f:
        result = json.load(f)
    assert 0 <= result["test"]["accuracy"] <= 1 and result["data"]["embedded"]
    return result


def test_train_mlp_on_embedded_subset(tmp_path, capsys):
    out = str(tmp_path / "mlp")
    assert main(["train", *SMALL, "--limit", "600", "--epochs", "1", "--out", out]) == 0
    text = capsys.readouterr().out
    assert "EMBEDDED" in text and "540 train / 60 validation / 1000 test" in text
    assert "BatchNorm1D" in text and "total parameters: 100,010" in text
    assert "test accuracy:" in text and "total wall time:" in text
    result = _check_outputs(out, "BatchNorm1D")
    assert result["config"]["optimizer"] == "nesterov" and result["config"]["lr"] is None
    assert result["test"]["accuracy"] > 0.3  # 1 epoch on 540 images: far above chance


def test_train_cnn_without_bn(tmp_path, capsys):
    out = str(tmp_path / "cnn")
    assert main(["train", *SMALL, "--model", "cnn", "--no-bn", "--limit", "200",
                 "--test-limit", "100", "--epochs", "1", "--batch-size", "32",
                 "--optimizer", "adam", "--schedule", "step", "--out", out]) == 0
    text = capsys.readouterr().out
    assert "Conv2D" in text and "BatchNorm" not in text and "optimizer: adam, lr 0.001" in text
    result = _check_outputs(out, "Conv2D")
    assert result["data"]["test"] == 100


def test_train_checkpoint_and_resume(tmp_path, capsys):
    out = str(tmp_path / "ck")
    argv = ["train", *SMALL, "--limit", "300", "--test-limit", "50", "--checkpoint", "--out", out]
    assert main([*argv, "--epochs", "1"]) == 0
    assert os.path.getsize(os.path.join(out, "checkpoint.npz")) > 0
    assert main([*argv, "--epochs", "2", "--resume", os.path.join(out, "checkpoint.npz")]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert nnkern.History.from_json(os.path.join(out, "history.json")).epochs_completed == 2
    assert main([*argv, "--resume", str(tmp_path / "missing.npz")]) == 2


def test_default_data_falls_back_to_the_embedded_subset_loudly(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loaders, "SYSTEM_DIRS", {})
    monkeypatch.delenv("NNKERN_DATA", raising=False)
    out = str(tmp_path / "fallback")
    assert main(["train", "--no-progress", "--limit", "100", "--test-limit", "50",
                 "--epochs", "1", "--val-split", "0", "--early-stop", "0", "--out", out]) == 0
    text = capsys.readouterr().out
    assert "WARNING: the full Fashion-MNIST was not found; using the EMBEDDED SUBSET" in text
    assert "no validation data" in text


# -- recipes -----------------------------------------------------------------------------------
def test_prepare_data_pads_splits_and_standardises():
    data = prepare_data("fashion-mnist-small", limit=200, test_limit=50, pad=32, val_split=0.1)
    assert data.train[0].shape == (180, 1, 32, 32) and data.val[0].shape == (20, 1, 32, 32)
    assert data.test[0].shape == (50, 1, 32, 32) and data.train[0].dtype == np.float32
    assert abs(float(data.train[0].mean())) < 1e-4 and abs(float(data.train[0].std()) - 1) < 1e-3
    assert data.embedded and data.requested_embedded and "NOTE" in data.warning()
    assert np.bincount(data.train[1], minlength=10).min() > 0


def test_prepare_data_test_seed_fixes_the_test_subset():
    ds = load_dataset("fashion-mnist-small")
    a = prepare_data(dataset=ds, limit=200, test_limit=50, seed=1, test_seed=0)
    b = prepare_data(dataset=ds, limit=200, test_limit=50, seed=0)
    c = prepare_data(dataset=ds, limit=200, test_limit=50, seed=1)

    def raw(d):   # the test images before standardisation
        return d.test[0] * d.standardizer.std + d.standardizer.mean

    assert np.allclose(raw(a), raw(b), atol=1e-4) and not np.allclose(raw(a), raw(c), atol=1e-4)
    assert np.array_equal(a.train[0], c.train[0]) and np.array_equal(a.val[0], c.val[0])


@pytest.mark.parametrize("name, options, layer_types", [
    ("mlp", {}, {"Dense", "BatchNorm1D", "ReLU"}),
    ("mlp", {"bn": False, "activation": "sigmoid", "dropout": 0.5},
     {"Dense", "Sigmoid", "Dropout"}),
    ("cnn", {}, {"Conv2D", "BatchNorm2D", "MaxPool2D"}),
    ("cnn4", {"bn": False}, {"Conv2D", "MaxPool2D", "Dropout"}),
    ("allconv", {"variant": "lsh_lsc", "width": 0.1}, {"Conv2D", "Shift", "Scale"}),
    ("mlp24", {"bn": True, "width": 0.05}, {"Dense", "BatchNorm1D"}),
])
def test_build_model(name, options, layer_types):
    shape = (1, 32, 32) if name == "allconv" else (1, 28, 28)
    model = build_model(name, shape, 10, rng=0, **options)
    types = {type(layer).__name__ for layer in model}
    assert layer_types <= types
    x = np.zeros((2,) + shape, np.float32)
    assert model.forward(x, training=False).shape == (2, 10)


def test_cnn4_has_two_convolutions_per_block():
    model = build_model("cnn4", (1, 28, 28), 10, rng=0)
    convs = [layer.weight.shape for layer in model if type(layer).__name__ == "Conv2D"]
    assert convs == [(32, 1, 3, 3), (32, 32, 3, 3), (64, 32, 3, 3), (64, 64, 3, 3)]
    assert [layer.get_config()["p"] for layer in model
            if type(layer).__name__ == "Dropout"] == [0.5]


def test_init_scales_follow_seed_002():
    low = build_model("mlp", (1, 28, 28), 10, bn=False, init="low", rng=0)
    high = build_model("mlp", (1, 28, 28), 10, bn=False, init="high", rng=0)
    assert 0.5e-4 < float(low[1].weight.data.std()) < 2e-4
    assert 0.9 < float(high[1].weight.data.std()) < 1.1
    assert check_model_options("allconv") == (False, "plain")
    assert check_model_options("allconv", bn=True) == (True, "bn")


def test_width_scales_seed_000_models():
    net = models.allconv(1, 10, 32, width=0.25)
    convs = [layer for layer in net if type(layer).__name__ == "Conv2D"]
    assert [c.weight.shape[0] for c in convs] == [24, 24, 24, 48, 48, 48, 48, 48, 10]
    mlp = models.mlp24(784, 10, width=0.1)
    dense = [layer for layer in mlp if type(layer).__name__ == "Dense"]
    assert len(dense) == 24 and [d.weight.shape[0] for d in dense[:3]] == [300, 100, 100]
    assert dense[-1].weight.shape == (10, 30)
    with pytest.raises(ValueError, match="width must be > 0"):
        models.mlp24(784, 10, width=0)


def test_optimizers_and_schedules():
    model = build_model("mlp", (1, 28, 28), 10, rng=0)
    sgd = build_optimizer("nesterov", model.parameters())
    assert sgd.lr == 0.01 and sgd.param_groups[0]["nesterov"]
    assert build_optimizer("adam", model.parameters()).lr == 0.001
    callbacks, notes = build_callbacks("plateau", sgd, has_validation=True)
    plateau, early = callbacks
    assert plateau.factor == 0.5 and plateau.monitor == "val_accuracy"
    for _ in range(5):  # seed 002: halve after 5 epochs without a gain
        plateau.step(0.5)
    assert sgd.lr == 0.01  # the first epoch set the best; 4 bad ones so far
    plateau.step(0.5)
    assert sgd.lr == 0.005
    assert early.patience == 20 and early.restore_best_weights
    with pytest.raises(ValueError, match="unknown optimizer"):
        build_optimizer("lbfgs", model.parameters())
    with pytest.raises(ValueError, match="unknown schedule"):
        build_callbacks("cosine", sgd, has_validation=True)


# -- the example scripts ---------------------------------------------------------------------------
def run_example(name, argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", [name, *argv])
    runpy.run_path(os.path.join(EXAMPLES, name), run_name="__main__")


TINY = [*SMALL, "--epochs", "1", "--test-limit", "60"]


def test_example_seed002_mlp(tmp_path, monkeypatch, capsys):
    run_example("seed002_mlp.py", [*TINY, "--limit", "300", "--out", str(tmp_path)], monkeypatch)
    for path in ("vanilla/history.json", "bn/history.png", "bn/model.npz", "comparison.png",
                 "results.json"):
        assert (tmp_path / path).stat().st_size > 0
    assert "| vanilla |" in capsys.readouterr().out


def test_example_seed002_vgg(tmp_path, monkeypatch):
    run_example("seed002_vgg.py", [*TINY, "--limit", "20", "--batch-size", "8",
                                   "--test-limit", "10", "--out", str(tmp_path)], monkeypatch)
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["runs"]) == {"vanilla", "bn"}
    assert (tmp_path / "comparison.png").stat().st_size > 0


def test_example_seed002_study(tmp_path, monkeypatch):
    run_example("seed002_study.py", [*TINY, "--limit", "200", "--rows", "relu,lr_high,init_low",
                                     "--batch-sizes", "64,128", "--timing-limit", "128",
                                     "--out", str(tmp_path)], monkeypatch)
    table = (tmp_path / "table.md").read_text()
    assert "Initial LR" in table and "high (0.1)" in table and "BN overhead" in table
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["timing"]) == {"64", "128"}
    assert (tmp_path / "lr_high" / "comparison.png").stat().st_size > 0


def test_example_seed000_allconv(tmp_path, monkeypatch):
    run_example("seed000_allconv.py", [*TINY, "--limit", "100", "--width", "0.1",
                                       "--variant", "lsh", "--out", str(tmp_path)], monkeypatch)
    assert (tmp_path / "history.png").stat().st_size > 0
    assert type(nnkern.load(str(tmp_path / "model.npz"))[0]).__name__ == "Shift"


def test_example_seed000_mlp24(tmp_path, monkeypatch):
    run_example("seed000_mlp24.py", [*TINY, "--limit", "100", "--width", "0.05",
                                     "--dropout", "--out", str(tmp_path)], monkeypatch)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["epochs"] == 1


def test_example_seed000_shift_scale(tmp_path, monkeypatch):
    run_example("seed000_shift_scale.py",
                [*TINY, "--limit", "100", "--width", "0.1", "--variants", "plain,lsh_lsc",
                 "--runs", "2", "--out", str(tmp_path)], monkeypatch)
    results = json.loads((tmp_path / "results.json").read_text())
    assert [r["seed"] for r in results["runs"]["lsh_lsc"]] == [0, 1]
    assert (tmp_path / "variants.png").stat().st_size > 0
    assert "| lsh_lsc |" in (tmp_path / "table.md").read_text()


# -- end to end on the full set ------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not full_fashion_mnist_available(),
                    reason="the full Fashion-MNIST is not installed (dataset-fashion-mnist)")
def test_mlp_bn_one_epoch_on_full_fashion_mnist(tmp_path, capsys):
    out = str(tmp_path / "full")
    assert main(["train", "--no-progress", "--epochs", "1", "--out", out]) == 0
    text = capsys.readouterr().out
    assert "fashion-mnist (full set)" in text and "54000 train / 6000 validation" in text
    with open(os.path.join(out, "result.json")) as f:
        result = json.load(f)
    assert not result["data"]["embedded"] and result["data"]["test"] == 10000
    assert result["test"]["accuracy"] > 0.80
