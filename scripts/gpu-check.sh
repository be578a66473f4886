#!/usr/bin/env bash
# One command for a CUDA machine: build the CUDA ops (and their self-check), run the CUDA tests,
# `recon doctor`, and the projector bench at 256 and 1024 px (config-f shapes) with batch 1, 4, 8,
# 16 and compile off/on. Every step's output goes to OUT (default gpu-check-out), the tables to
# OUT/bench-*.md. Sized for under 8 minutes on one H100/H200; each step has its own time limit,
# and a failed step does not stop the others (the summary at the end says which failed).
#
#   bash scripts/gpu-check.sh [OUT]          (PYTHON=... picks the interpreter; default .venv's)
set -u
OUT=${1:-gpu-check-out}
mkdir -p "$OUT"
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
export PYTHONUNBUFFERED=1
failed=()

step() {   # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    echo "== $name ($(date +%T), limit ${limit}s)" | tee -a "$OUT/summary.txt"
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 40 "$OUT/$name.log"
    [ $rc -eq 0 ] || { failed+=("$name (exit $rc)"); echo "!! $name failed (exit $rc)" | tee -a "$OUT/summary.txt"; }
}

step doctor 240 "$PY" -m recon.cli doctor --resolution 1024 --device cuda
step cuda-tests 240 "$PY" -m pytest -q -x tests/test_ops.py tests/test_selfcheck.py -k "cuda or self or wrong or crash or cached"
step compile-test 180 "$PY" -m pytest -q -x tests/test_compiled.py -k "equals_eager"
step bench-256 150 "$PY" -m recon.bench --shapes 256:32768:512 --batch 1 4 8 16 --compile off --steps 20 --repeats 2 \
    --device cuda --json "$OUT/bench-256.json"
step bench-256-compiled 150 "$PY" -m recon.bench --shapes 256:32768:512 --batch 1 8 --compile on --steps 20 \
    --repeats 1 --device cuda --json "$OUT/bench-256-compiled.json"
step bench-1024 150 "$PY" -m recon.bench --shapes 1024:32768:512 --batch 1 4 8 16 --compile off --steps 10 \
    --repeats 1 --device cuda --json "$OUT/bench-1024.json"
step bench-1024-compiled 150 "$PY" -m recon.bench --shapes 1024:32768:512 --batch 1 --compile on --steps 10 \
    --repeats 1 --device cuda --json "$OUT/bench-1024-compiled.json"

for f in "$OUT"/bench-*.log; do
    [ -f "$f" ] && sed -n '/^projector benchmark/,$p' "$f" > "${f%.log}.md"
done
echo "== done ($(date +%T)); failed: ${failed[*]:-none}" | tee -a "$OUT/summary.txt"
[ ${#failed[@]} -eq 0 ]
