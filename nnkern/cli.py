"""``python -m nnkern <command>``: the command-line entry point.

Each command lives in its own module exposing ``DESCRIPTION``, ``add_arguments(parser)`` and
``run(args) -> exit code``; this file only routes to them (imported when chosen, so ``--help``
of one command does not load the other).
"""

import argparse
import importlib
import sys

COMMANDS = {
    "train": ("nnkern.experiments.cli", "train the seeds' models (MLP, CNN, VGG-10, all-conv)"),
    "bench": ("nnkern.benchmark.cli", "kernel and training-step microbenchmarks"),
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(
        prog="python -m nnkern",
        description="nnkern: Numba-accelerated neural-network kernels.",
        epilog="Run 'python -m nnkern <command> --help' for a command's options.")
    sub = parser.add_subparsers(dest="command", metavar="command")
    for name, (_, summary) in COMMANDS.items():
        sub.add_parser(name, help=summary, add_help=False)
    if not argv or argv[0] in ("-h", "--help"):
        parser.print_help()
        return 0
    if argv[0] not in COMMANDS:
        parser.parse_args(argv)  # prints the usage error and exits with status 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    command = argparse.ArgumentParser(prog=f"python -m nnkern {argv[0]}",
                                      description=module.DESCRIPTION)
    module.add_arguments(command)
    return module.run(command.parse_args(argv[1:]))
