"""The benchmark harness (nnkern.benchmark): statistics, counting, schema, outputs, CLI.

No assertion here is about measured speed: timings on a shared machine are noise. PyTorch is
never imported (the CLI runs with --no-torch).
"""

import json

import numpy as np
import pytest

from nnkern import cli as router
from nnkern.benchmark import cases, counting, report, runner, stats
from nnkern.benchmark import cli as bench_cli

# ------------------------------------------------------------------------------ statistics


def test_summarize_known_samples():
    s = stats.summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert s["n"] == 5
    assert s["median"] == 3.0 and s["mean"] == 3.0
    assert s["min"] == 1.0 and s["max"] == 5.0
    assert s["q1"] == 2.0 and s["q3"] == 4.0 and s["iqr"] == 2.0
    assert s["rel_iqr"] == pytest.approx(2.0 / 3.0)
    assert s["samples"] == [5.0, 1.0, 3.0, 2.0, 4.0]


def test_summarize_even_count_and_single_sample():
    s = stats.summarize([1.0, 2.0, 3.0, 10.0])
    assert s["median"] == 2.5  # linear interpolation, NumPy's default
    assert s["q1"] == 1.75 and s["q3"] == 4.75
    one = stats.summarize([0.25])
    assert one["median"] == one["min"] == one["max"] == 0.25 and one["iqr"] == 0.0


@pytest.mark.parametrize("bad", [[], [[1.0, 2.0]], [1.0, -1.0], [float("nan")]])
def test_summarize_rejects_bad_samples(bad):
    with pytest.raises(ValueError, match="summarize"):
        stats.summarize(bad)


def test_rate():
    assert stats.rate(3e9, 1.5) == pytest.approx(2.0)
    assert stats.rate(64, 0.5, 1.0) == 128.0
    assert stats.rate(None, 1.0) is None and stats.rate(1.0, 0.0) is None


class FakeClock:
    """Each call of fn costs ``per_call`` seconds; records the order of sampled functions."""

    name = "fake"

    def __init__(self, per_call):
        self.per_call = per_call
        self.log = []

    def sample(self, fn, number=1):
        for _ in range(number):
            fn()
        self.log.append((fn, number))
        return self.per_call(fn) if callable(self.per_call) else self.per_call


def test_calibrate_targets_the_sample_length():
    assert stats.calibrate(FakeClock(1e-4), lambda: None, target=0.01) == 100
    assert stats.calibrate(FakeClock(1.0), lambda: None, target=0.01) == 1
    assert stats.calibrate(FakeClock(1e-9), lambda: None, target=1.0, max_number=50) == 50


def test_timed_and_interleave():
    calls = {"a": 0, "b": 0}

    def fa():
        calls["a"] += 1

    def fb():
        calls["b"] += 1

    clock = FakeClock(lambda fn: 0.002 if fn is fa else 0.004)
    ta = stats.Timed(clock, fa, warmup=2, target=0.01)
    tb = stats.Timed(clock, fb, warmup=0, target=0.01)
    assert ta.first_call == 0.002 and ta.number == 5
    assert tb.number == 3
    clock.log.clear()
    stats.interleave([ta, tb, None], 4)
    # alternating order each round; each sample after one untimed call of its own
    a, b = [(fa, 1), (fa, 5)], [(fb, 1), (fb, 3)]
    assert clock.log == a + b + b + a + a + b + b + a
    result = ta.result()
    assert result["n"] == 4 and result["median"] == 0.002
    assert result["first_call"] == 0.002 and result["number"] == 5


# -------------------------------------------------------------------------------- counting


def test_conv_counts_known_shape():
    # x (2, 3, 4, 4), w (5, 3, 3, 3), pad 1 -> y (2, 5, 4, 4): 2*5*3*9*16 = 4320 MACs
    c = counting.conv2d(2, 3, 4, 4, 5, 3, 3, padding=1)
    assert c["forward"]["flops"] == 2 * 4320 + 160       # + one bias add per output
    assert c["forward"]["bytes"] == 4 * (96 + 135 + 5 + 160)
    assert c["backward"]["flops"] == 4 * 4320 + 160      # dW and dX GEMMs + db
    assert c["backward"]["bytes"] == 4 * (160 + 96 + 135 + 96 + 135 + 5)
    first = counting.conv2d(2, 3, 4, 4, 5, 3, 3, padding=1, bias=False, need_dx=False)
    assert first["forward"]["flops"] == 2 * 4320
    assert first["backward"]["flops"] == 2 * 4320
    assert first["backward"]["bytes"] == 4 * (160 + 96 + 135 + 135)


def test_conv_flops_match_a_brute_force_count():
    # the GEMM-equivalent count: every (output, c, i, j) term, padded zeros included
    n, c, h, w, k, r = 1, 2, 5, 4, 3, 3
    oh, ow = counting.conv_out(h, r, 2, 1), counting.conv_out(w, r, 2, 1)
    terms = sum(1 for _ in np.ndindex(n, k, oh, ow, c, r, r))
    got = counting.conv2d(n, c, h, w, k, r, r, stride=2, padding=1, bias=False)
    assert got["forward"]["flops"] == 2 * terms
    assert (oh, ow) == (3, 2)


def test_dense_and_memory_bound_counts():
    d = counting.dense(4, 3, 2)
    assert d["forward"] == {"flops": 2 * 24 + 8, "bytes": 4 * (12 + 6 + 2 + 8)}
    assert d["backward"] == {"flops": 4 * 24 + 8, "bytes": 4 * (8 + 12 + 6 + 12 + 6 + 2)}
    assert counting.activation("relu", 100)["forward"] == {"flops": 100, "bytes": 800}
    assert counting.activation("relu", 100)["backward"]["bytes"] == 1200
    assert counting.dropout(100)["forward"]["bytes"] == 900       # x, y, uint8 mask
    bn = counting.batch_norm((8, 4, 2, 2))
    assert bn["forward"]["bytes"] == 4 * (2 * 128 + 8 * 4)
    mp = counting.pool2d("max", 1, 2, 4, 4, 2, 2)
    assert mp["forward"]["bytes"] == 4 * (32 + 8) + 4 * 8          # int32 argmax
    assert counting.pool2d("avg", 1, 2, 4, 4, 2, 2)["backward"]["flops"] == 32
    with pytest.raises(ValueError, match="kind"):
        counting.pool2d("min", 1, 1, 2, 2, 2, 2)
    ce = counting.softmax_cross_entropy(64, 10)
    assert ce["forward"]["bytes"] == 2 * 640 * 4 + 64 * 8
    assert counting.optimizer("sgd_momentum", 10)["update"]["bytes"] == 200
    assert counting.optimizer("adam", 10)["update"]["bytes"] == 280
    assert counting.copy(1 << 20)["bytes"] == 2 << 20
    assert counting.sgemm(2, 3, 4)["flops"] == 48


def test_standard_cases_cover_the_brief():
    all_cases = cases.standard_cases()
    names = {c.name for c in all_cases}
    convs = [c for c in all_cases if c.group == "conv"]
    # every VGG-10 convolution, the C=3 first layer and a 1x1 convolution
    assert {f"vgg conv{b}_{i}" for b in range(2, 6) for i in (1, 2)} | \
        {"vgg conv1_2", "vgg conv1_1 C=1", "vgg conv1_1 C=3", "conv1x1 256->64"} <= names
    assert len(convs) == 12
    assert {c.group for c in all_cases} == set(cases.GROUPS)
    for c in all_cases:
        assert c.kind in ("compute", "memory")
        for counts in c.counts.values():
            assert counts["flops"] > 0 and counts["bytes"] > 0
    first = next(c for c in convs if c.name == "vgg conv1_1 C=3")
    assert first.params["need_dx"] is False and first.params["C"] == 3
    with pytest.raises(ValueError, match="unknown kernel groups"):
        cases.select(all_cases, ["conv", "nope"])


def test_vgg10_conv_shapes_follow_the_model():
    from nnkern import models
    model = models.vgg10(in_channels=1)
    convs = [layer for layer in model.layers if type(layer).__name__ == "Conv2D"]
    shapes = cases.vgg10_convs()
    assert [(c.config["in_channels"], c.config["out_channels"]) for c in convs] == \
        [(cin, k) for _, cin, _, k in shapes]
    assert [h for _, _, h, _ in shapes] == [32, 32, 16, 16, 8, 8, 4, 4, 2, 2]


# ------------------------------------------------------------------------- schema, outputs


def _stats(t):
    out = stats.summarize([t, t * 1.1, t * 0.9])
    out.update(first_call=t * 10, number=1)
    return out


def synthetic_result():
    rows = []
    for case in cases.quick_cases()[:3]:
        for name, counts in case.counts.items():
            t = 1e-3
            res = {"time": _stats(t), "gflops": counts["flops"] / t / 1e9,
                   "gbs": counts["bytes"] / t / 1e9, "pct_ceiling": 10.0}
            rows.append({"group": case.group, "name": case.name, "pass": name,
                         "shape": case.shape, "kind": case.kind, "params": case.params,
                         "flops": counts["flops"], "bytes": counts["bytes"],
                         "intensity": counts["flops"] / counts["bytes"],
                         "ceiling": "sgemm", "results": {"nnkern": res, "torch": res},
                         "skipped": {}, "ratio_vs_torch": 1.0})
    env = {"date": "2026-01-01T00:00:00+00:00", "command": "python -m nnkern bench",
           "host": "h", "cpu_model": "cpu", "cpu_count": 2, "cores_available": 2,
           "device": "cpu", "threads": 2, "threads_set_via": "x",
           "numba_threading_layer": "omp", "numba_num_threads": 2, "blas_pools": [],
           "torch_threads": 2, "versions": {"numpy": "2", "numba": "0", "nnkern": "0"},
           "git": {"commit": None}}
    step = {"model": "mlp 3x100", "batch": 64, "params": 10, "skipped": {},
            "loss_check": {"ok": True, "max_rel_diff": 1e-7},
            "results": {"nnkern": {"time": _stats(2e-3), "samples_per_s": 32000.0}}}
    return {"schema": report.SCHEMA, "created": env["date"], "command": env["command"],
            "args": {}, "environment": env, "load": {"before": [0.1, 0.1, 0.1],
                                                     "after": [0.2, 0.1, 0.1]},
            "torch": {"available": True, "version": "x", "reason": None},
            "ceilings": {"sgemm": {"gflops": 150.0, "gflops_best": 160.0, "what": "gemm",
                                   "time": _stats(0.1)},
                         "copy": {"gbs": 20.0, "what": "copy", "time": _stats(0.02)}},
            "kernels": rows, "steps": [step], "jit": None, "notes": ["a note"]}


def test_schema_validation_and_json_round_trip(tmp_path):
    result = synthetic_result()
    path = report.write_json(result, tmp_path / "r.json")
    assert report.read_json(path) == json.loads(json.dumps(result))
    broken = synthetic_result()
    del broken["kernels"][0]["results"]["nnkern"]["time"]["median"]
    with pytest.raises(report.SchemaError, match=r"kernels\[0\].nnkern.time.*median"):
        report.validate(broken)
    broken = synthetic_result()
    broken["schema"] = "other/0"
    with pytest.raises(report.SchemaError, match="schema"):
        report.validate(broken)
    broken = synthetic_result()
    del broken["load"]
    with pytest.raises(report.SchemaError, match="load"):
        report.validate(broken)


def test_roofline_png_written(tmp_path):
    path = report.roofline(synthetic_result(), tmp_path / "sub" / "roof.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000


def test_tables_and_results_markdown(tmp_path):
    result = synthetic_result()
    lines = []
    report.print_report(result, lines.append)
    text = "\n".join(lines)
    assert "conv tiny first" in text and "×torch" in text and "a note" in text
    md = tmp_path / "RESULTS.md"
    md.write_text("# Results\n\nhand-written intro\n")
    report.update_results_md(result, md, tmp_path / "r.json", tmp_path / "r.png")
    first = md.read_text()
    assert "hand-written intro" in first and report.GENERATED_BEGIN in first
    assert "| kernel | pass |" in first and "![roofline](r.png)" in first
    md.write_text(first + "\nafterword\n")
    report.update_results_md(result, md)  # regenerated in place, other text kept
    second = md.read_text()
    assert second.count(report.GENERATED_BEGIN) == 1
    assert "hand-written intro" in second and "afterword" in second


# ------------------------------------------------------------------------------------- CLI


def test_help_lists_the_options(capsys):
    with pytest.raises(SystemExit) as e:
        router.main(["bench", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--quick", "--only", "--device", "--repeat", "--threads", "--no-torch",
                 "--out", "--steps", "--jit", "--results-md"):
        assert flag in out


def _parse(argv):
    import argparse
    parser = argparse.ArgumentParser()
    bench_cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_section_selection():
    everything = set(bench_cli.SECTIONS)
    assert bench_cli._sections(_parse([])) == everything
    assert bench_cli._sections(_parse(["--quick"])) == everything - {"jit"}
    assert bench_cli._sections(_parse(["--only", "conv, bn"])) == {"conv", "bn"}
    assert bench_cli._sections(_parse(["--only", "act", "--steps"])) == {"act", "steps"}
    assert bench_cli._sections(_parse(["--jit"])) == {"jit"}
    with pytest.raises(ValueError, match="unknown sections"):
        bench_cli._sections(_parse(["--only", "conv,gemm"]))


def test_bad_options_exit_2(capsys):
    assert router.main(["bench", "--only", "nope", "--no-torch"]) == 2
    assert "unknown sections" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        router.main(["bench", "--repeat", "0"])


def test_cli_quick_run_without_torch(tmp_path, capsys):
    out = tmp_path / "results"
    md = tmp_path / "RESULTS.md"
    rc = router.main(["bench", "--quick", "--no-torch", "--only", "act,loss,steps", "--repeat",
                      "2", "--out", str(out), "--results-md", str(md)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "disabled by --no-torch" in printed and "relu mlp" in printed
    files = sorted(out.iterdir())
    json_files = [f for f in files if f.suffix == ".json"]
    assert len(json_files) == 1 and json_files[0].name.endswith("-cpu-quick.json")
    assert json_files[0].with_suffix(".png").exists()
    result = report.read_json(json_files[0])
    assert result["torch"]["available"] is False
    assert {r["group"] for r in result["kernels"]} == {"act", "loss"}
    assert {r["pass"] for r in result["kernels"]} == {"forward", "backward"}
    for row in result["kernels"]:
        assert set(row["results"]) == {"nnkern"}
        assert row["results"]["nnkern"]["time"]["n"] == 2
    assert [s["model"] for s in result["steps"]] == ["mlp 3x100"]
    assert result["steps"][0]["loss_check"] is None
    env = result["environment"]
    assert env["threads"] >= 1 and env["cpu_model"] and env["versions"]["numba"]
    assert "--quick" in env["command"]
    assert len(result["load"]["before"]) == 3
    assert report.GENERATED_BEGIN in md.read_text()
    # --report re-prints a stored result without measuring
    assert router.main(["bench", "--report", str(json_files[0])]) == 0
    assert "relu mlp" in capsys.readouterr().out


def test_cuda_refuses_the_simulator(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")
    with pytest.raises(runner.BenchmarkRefused, match="simulator"):
        runner.check_device("cuda")
    rc = router.main(["bench", "--device", "cuda", "--quick", "--no-torch", "--out",
                      str(tmp_path)])
    assert rc == 2
    assert "simulator" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing measured, nothing written
    runner.check_device("cpu")  # the CPU benchmark does not care


def test_cuda_without_gpu_says_so(monkeypatch, capsys):
    import nnkern.backend
    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    monkeypatch.setattr(nnkern.backend, "cuda_available", lambda: False)
    monkeypatch.setattr(runner, "simulator_active", lambda: False)
    assert router.main(["bench", "--device", "cuda", "--no-torch"]) == 2
    assert "no CUDA GPU is available" in capsys.readouterr().err
