#!/usr/bin/env bash
# The whole test suite, as the README gives it: the CUDA tests in a process of their own
# (NUMBA_ENABLE_CUDASIM must be set before numba.cuda is imported), then the CPU tests. Without a GPU
# the CUDA tests run on the numba-cuda simulator. Extra arguments go to both pytest runs.
# pytest's exit code 5 ("no tests collected") counts as a failure: a suite that runs nothing
# must not pass.
set -u
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}

run() {
    "$@"
    local rc=$?
    if [ "$rc" -eq 5 ]; then
        echo "tests/run.sh: no tests collected by: $*" >&2
        return 1
    fi
    return "$rc"
}

# The CUDA run records every kernel launch's argument types; the CPU run then compiles each of
# them for a real GPU (tests/test_cuda_compile.py), which the simulator cannot check.
export NNKERN_RECORD_CUDA_SIGNATURES="${NNKERN_RECORD_CUDA_SIGNATURES:-$(mktemp -d)/cuda-signatures.jsonl}"
rm -f "$NNKERN_RECORD_CUDA_SIGNATURES"

status=0
if "$PYTHON" -c "import numba.cuda, sys; sys.exit(0 if numba.cuda.is_available() else 1)" \
        2>/dev/null; then
    run "$PYTHON" -m pytest -m cuda "$@" || status=1          # a real GPU
else
    NUMBA_ENABLE_CUDASIM=1 run "$PYTHON" -m pytest -m cuda "$@" || status=1
fi
run "$PYTHON" -m pytest -m "not cuda" "$@" || status=1
exit $status
