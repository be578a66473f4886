#!/usr/bin/env bash
# One command for a CUDA machine: first `recon verify --device cuda` (this install against the
# repository's fixtures: the generator, ops, kernels, recorded runs, alignment, precision gate and a
# short bench, one verdict), then the timings: build the CUDA ops (and their self-check) with `recon doctor`,
# time each kernel against its reference, run the projector bench at 1024 and 256 px (config-f
# shapes) with batch 1, 4, 8, 16 (kernels for large tensors, and the reference ops alone), run the
# CUDA tests, then (as the budget allows: compiling took minutes on an H200) the compiled step.
# The 1024 px bench runs every precision mode (fp32, tf32, bf16) at batch 1, 8, 16 and 32, with
# FLOPs per image-step and TFLOP/s beside a measured GEMM peak; the precision gate runs at 256 px.
#
#   bash scripts/gpu-check.sh [OUT]
#
# Everything goes to OUT (default gpu-check-out): one log per step, the bench rows as JSON, and
# OUT/report.md (the machine, every table, what failed or was skipped). The steps run in order of
# what matters most and share one time budget (BUDGET seconds, default 470: under 8 minutes on
# one H100/H200); a step that would start past it is skipped and named in the report, and a step
# that fails does not stop the others. Environment: PYTHON (default .venv/bin/python, else
# python3); ONLY, the names of the steps to run (default all); RECON_OFFICIAL_SRC (a checkout of
# stylegan2-ada-pytorch: the benches then time NVIDIA's own projector); WHEELS, a folder of
# wheels installed first into a temporary site when pydantic or ruamel.yaml are missing (a
# machine with no package index).
set -u
OUT=${1:-gpu-check-out}
BUDGET=${BUDGET:-470}
mkdir -p "$OUT"
START=$(date +%s)
PY=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONUNBUFFERED=1
export RECON_EXT_DIR=${RECON_EXT_DIR:-$PWD/.gpu-check-build}   # the build and its self-check verdict
REPORT=$OUT/report.md
failed=() skipped=()

if ! "$PY" -c "import pydantic, ruamel.yaml" 2>/dev/null && [ -d "${WHEELS:-.whl}" ]; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/recon-site \
        "${WHEELS:-.whl}"/*.whl && export PYTHONPATH=/tmp/recon-site${PYTHONPATH:+:$PYTHONPATH}
fi

left() { echo $(( BUDGET - ($(date +%s) - START) )); }

step() {   # step NAME SECONDS COMMAND...: at most SECONDS, and never past the budget
    local name=$1 limit=$2 rc
    shift 2
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi
    local remaining; remaining=$(left)
    if (( remaining < 20 )); then
        skipped+=("$name"); echo "== $name: skipped (budget of ${BUDGET}s spent)"; return
    fi
    (( limit > remaining )) && limit=$remaining
    echo "== $name ($(date +%T), limit ${limit}s)"
    timeout -k 5 "$limit" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    tail -n 25 "$OUT/$name.log"
    if (( rc != 0 )); then
        failed+=("$name (exit $rc$( ((rc == 124)) && echo ', out of time'))")
        echo "!! $name failed (exit $rc)"
    fi
}

{
    echo "# recon GPU check, $(date -u +'%F %T') UTC"
    echo
    echo '```'
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>&1 | head -3
    "$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN', torch.backends.cudnn.version())"
    nvcc --version 2>&1 | tail -1
    echo '```'
} > "$REPORT"

step verify 150 "$PY" -m recon.cli verify --device cuda --out "$OUT/verify"
step doctor 240 "$PY" -m recon.cli doctor --resolution 1024 --device cuda
step ops-timing 60 "$PY" -m recon.model.ops.timing --batch 1 8 --reps 20
step bench-1024 200 "$PY" -m recon.bench --shapes 1024:32768:512 --batch 1 8 16 32 --compile off --ops auto \
    --precision fp32 tf32 bf16 --steps 10 --repeats 1 --device cuda --timeout 60 --json "$OUT/bench-1024.json"
step precision-gate 120 "$PY" -m recon.cli doctor --gate --resolution 256 --device cuda
step cuda-tests 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_ops.py tests/test_selfcheck.py \
    -k "cuda or self or wrong or crash or cached"
step compile-test 90 "$PY" -m pytest -q -p no:cacheprovider tests/test_compiled.py -k "compiled_step and cuda"
step bench-256 90 "$PY" -m recon.bench --shapes 256:32768:512 --batch 1 4 8 16 --compile off --steps 20 \
    --repeats 1 --device cuda --timeout 60 --json "$OUT/bench-256.json"
step bench-256-compiled 300 "$PY" -m recon.bench --shapes 256:32768:512 --batch 1 --compile on --steps 20 \
    --repeats 1 --device cuda --timeout 290 --json "$OUT/bench-256-compiled.json"
step bench-1024-compiled 300 "$PY" -m recon.bench --shapes 1024:32768:512 --batch 1 --compile on --steps 10 \
    --repeats 1 --device cuda --timeout 290 --json "$OUT/bench-1024-compiled.json"
step compile-test-graphs 90 env RECON_COMPILE_MODE=reduce-overhead "$PY" -m pytest -q -p no:cacheprovider \
    tests/test_compiled.py -k "compiled_step and cuda"

{
    [ -f "$OUT/verify/report.md" ] && { echo; sed 's/^# /## /' "$OUT/verify/report.md"; }
    for name in doctor ops-timing precision-gate cuda-tests compile-test compile-test-graphs; do
        [ -f "$OUT/$name.log" ] || continue
        echo; echo "## $name"; echo; echo '```'
        grep -v -E '^\s*$|Warning|warn\(' "$OUT/$name.log" | tail -n 30
        echo '```'
    done
    for f in "$OUT"/bench-*.log; do
        [ -f "$f" ] || continue
        echo; echo "## $(basename "${f%.log}")"
        # the last table the bench printed (it prints one per round), else its last lines
        table=$(awk '/^projector benchmark/{buf=""} {buf=buf $0 "\n"} END{printf "%s", buf}' "$f")
        if [[ $table == "projector benchmark"* ]]; then echo "$table"; else echo '```'; tail -n 15 "$f"; echo '```'; fi
    done
    echo
    echo "took $(( $(date +%s) - START )) s of a ${BUDGET} s budget; failed: ${failed[*]:-none}; skipped: ${skipped[*]:-none}"
} >> "$REPORT"
echo "== done in $(( $(date +%s) - START )) s; failed: ${failed[*]:-none}; skipped: ${skipped[*]:-none}"
[ ${#failed[@]} -eq 0 ] && [ ${#skipped[@]} -eq 0 ]
