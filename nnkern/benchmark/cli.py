"""``python -m nnkern bench``: kernel and training-step benchmarks (see bench/README.md)."""

import shlex
import sys
import time
from pathlib import Path

from nnkern.benchmark.cases import GROUPS

DESCRIPTION = (
    "Time nnkern's kernels (forward and backward, standard shape set of seed 002's models, "
    "batch 64), whole training steps and the JIT cost, against this machine's measured "
    "ceilings (sgemm, copy bandwidth) and against PyTorch on the same shapes in the same "
    "process when torch is importable. Prints a table and writes a JSON file and a roofline "
    "PNG under --out. With none of --only/--steps/--jit everything runs (JIT cost included, "
    "except with --quick).")

SECTIONS = GROUPS + ("steps", "jit")


def _default_out():
    repo = Path(__file__).resolve().parents[2]
    return repo / "bench" / "results" if (repo / "bench").is_dir() else Path("bench-results")


def _positive(value):
    n = int(value)
    if n < 1:
        raise ValueError
    return n


_positive.__name__ = "positive integer"


def add_arguments(parser):
    parser.add_argument("--quick", action="store_true",
                        help="tiny shapes, 3 samples, MLP step only, no JIT cost: a smoke run "
                             "that finishes in seconds (numbers not for comparison)")
    parser.add_argument("--only", metavar="LIST",
                        help=f"comma-separated sections to run, from: {','.join(SECTIONS)} "
                             f"(default: all)")
    parser.add_argument("--steps", action="store_true",
                        help="run the whole-training-step benchmarks (added to --only)")
    parser.add_argument("--jit", action="store_true",
                        help="measure JIT cost in fresh processes: cold cache, warm cache, "
                             "nnkern.warmup() (added to --only)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="cpu (default) or cuda: CUDA events after synchronising; refuses "
                             "the numba-cuda simulator")
    parser.add_argument("--repeat", type=_positive, metavar="N",
                        help="samples per measurement (default 7, --quick 3)")
    parser.add_argument("--threads", type=_positive, metavar="N",
                        help="threads for Numba, both OpenBLAS pools and torch (default: all "
                             "NUMBA_NUM_THREADS)")
    parser.add_argument("--no-torch", action="store_true",
                        help="skip the PyTorch comparison even if torch is importable")
    parser.add_argument("--out", metavar="DIR", type=Path,
                        help=f"where the JSON and PNG go (default: {_default_out()})")
    parser.add_argument("--results-md", metavar="PATH", type=Path,
                        help="also write the run into this markdown file (bench/RESULTS.md): "
                             "its generated section is replaced, other text kept")
    parser.add_argument("--report", metavar="JSON", type=Path,
                        help="measure nothing: print (and with --results-md/--out, re-render) "
                             "an existing result file")


def _sections(args):
    chosen = set()
    if args.only:
        chosen = {s.strip() for s in args.only.split(",") if s.strip()}
        unknown = sorted(chosen - set(SECTIONS))
        if unknown:
            raise ValueError(f"--only: unknown sections {unknown}; choose from "
                             f"{','.join(SECTIONS)}")
    if args.steps:
        chosen.add("steps")
    if args.jit:
        chosen.add("jit")
    if not chosen:
        chosen = set(SECTIONS) - ({"jit"} if args.quick else set())
    return chosen


def _command(args):
    argv = sys.argv[1:]
    if argv[:1] == ["bench"]:
        return "python -m nnkern " + " ".join(shlex.quote(a) for a in argv)
    parts = []
    for key, value in sorted(vars(args).items()):
        flag = "--" + key.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif value not in (None, False):
            parts.append(f"{flag} {shlex.quote(str(value))}")
    return " ".join(["python -m nnkern bench", *parts])


def _outputs(result, args, stem):
    from nnkern.benchmark import report
    out_dir = args.out or _default_out()
    json_path = report.write_json(result, out_dir / f"{stem}.json")
    png_path = None
    if result["kernels"]:
        png_path = report.roofline(result, out_dir / f"{stem}.png")
    print(f"\nwrote {json_path}" + (f" and {png_path}" if png_path else ""))
    if args.results_md:
        md = report.update_results_md(result, args.results_md, json_path, png_path)
        print(f"wrote {md}")


def run(args):
    from nnkern.benchmark import report, runner

    if args.report:
        result = report.read_json(args.report)
        report.print_report(result)
        if args.results_md or args.out:
            _outputs(result, args, args.report.stem)
        return 0
    try:
        sections = _sections(args)
    except ValueError as e:
        print(f"nnkern bench: {e}", file=sys.stderr)
        return 2
    opts = runner.Options(
        quick=args.quick,
        groups=tuple(g for g in GROUPS if g in sections),
        steps="steps" in sections,
        jit="jit" in sections,
        device=args.device,
        repeat=args.repeat or (3 if args.quick else 7),
        threads=args.threads,
        torch=not args.no_torch,
        target=0.002 if args.quick else 0.01,
        warmup=1 if args.quick else 2,
        command=_command(args),
        args={k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    )
    start = time.perf_counter()
    try:
        result = runner.run_benchmark(opts)
    except runner.BenchmarkRefused as e:
        print(f"nnkern bench: {e}", file=sys.stderr)
        return 2
    result["wall_s"] = time.perf_counter() - start
    report.print_report(result)
    stamp = result["created"].replace(":", "").replace("-", "")[:15]
    stem = f"bench-{stamp}-{opts.device}" + ("-quick" if opts.quick else "")
    _outputs(result, args, stem)
    failed = [r["model"] for r in result["steps"]
              if r.get("loss_check") and not r["loss_check"]["ok"]]
    if failed:
        print(f"nnkern bench: loss check failed for {failed}: nnkern and torch disagree",
              file=sys.stderr)
        return 1
    return 0
