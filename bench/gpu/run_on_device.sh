#!/usr/bin/env bash
# One-command GPU run of bench/gpu/bench_flux.py on the lent device machine (no network there, its own torch).
# The device image has torch, transformers, accelerate, safetensors, huggingface_hub; it lacks diffusers (and
# importlib_metadata, which diffusers imports), torchao, and may hold another peft: those travel as wheels in
# bench/gpu/wheels (gitignored; fetch them here with bench/gpu/fetch_wheels.sh, then name it in `carry`).
# Results land in $OUT/bench (bench_flux.md, bench_flux.json, log.txt).
set -u
cd "$(dirname "$0")/../.."
OUTDIR="${OUT:-bench_out}/bench"
mkdir -p "$OUTDIR"
if ls bench/gpu/wheels/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    bench/gpu/wheels/*.whl || { echo "wheel install failed"; exit 3; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
else
  echo "no wheels in bench/gpu/wheels: relying on what the machine has"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv 2>&1 | tee "$OUTDIR/nvidia_smi.txt"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export TORCHINDUCTOR_CACHE_DIR=/tmp/inductor_cache
# 600 s is the per-command limit (run it with timeout_s 560): the bench starts no new mode after --budget-s, timeout kills it at
# 480 s whatever happens, so the rows written so far (row by row) still come back.
set -o pipefail
timeout -k 10 480 python3 bench/gpu/bench_flux.py --size full --out "$OUTDIR" --budget-s 360 "$@" 2>&1 \
  | tee "$OUTDIR/log.txt"
rc=$?
echo "bench exit code $rc"
cat "$OUTDIR/bench_flux.md" 2>/dev/null
exit $rc
