#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine (the GPU figures in
# docs/benchmarks.md and docs/lm.md come from its output). From the repo root:
#   bash benchmarks/gpu_checks.sh [OUTDIR] [SECONDS]
# Steps run in order of importance and each gets what is left of SECONDS (default 480).
# Packages the machine may lack (polars, datasets) are installed first from wheels in
# .whl/ when that folder exists (../.library/device/README.md says how they travel).
set -uo pipefail
out=${1:-${OUT:-/tmp/gpu-checks}}
deadline=$(( $(date +%s) + ${2:-480} ))
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
left() { echo $(( deadline - $(date +%s) )); }
step() { echo; echo "== $* ($(date +%T), $(left) s left)"; }
run() {  # run CMD... with the time that is left, output also to $out/$name.txt
  local name=$1; shift
  local t; t=$(left)
  if [ "$t" -lt 20 ]; then echo "skipped: no time left"; return; fi
  timeout "$t" "$@" 2>&1 | grep -v "Writing model shards" | tee "$out/$name.txt"
}

step machine
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, pyarrow, transformers, polars; print('torch', torch.__version__, 'pyarrow', pyarrow.__version__, 'transformers', transformers.__version__, 'polars', polars.__version__)"
hf=--skip-hf
python3 -c "import datasets" 2>/dev/null && hf=""

step "CUDA tests: generate (overlapped engine), per-token top-k, train fp32/bf16/fp16, resume"
run tests python3 -m pytest -p no:cacheprovider -n 0 -q tests/test_cuda.py tests/test_world.py

step "issue 9: LM generate, 2 x Llama 8x1024, V=32k, topk:32, bf16, vs a bare bf16 forward"
run lm_small python3 benchmarks/bench_lm_generate.py --device cuda --work /tmp/lm --repeats 2

step "issue 13: generate vs the datasets path vs the bare loop, 3 x MLP 784-8192-8192-10 on CUDA"
run vs_hf python3 benchmarks/bench_vs_hf.py --device cuda --teacher-width 8192 --rounds 1 $hf

step "issue 9: LM generate, 2 x Llama 16x2048 (~1B each), 1,024 rows x 512 tokens"
run lm_1b python3 benchmarks/bench_lm_generate.py --device cuda --work /tmp/lm1b --layers 16 --width 2048 --rows 1024 --repeats 1

step "issue 11: views on CUDA (replay exactness, throughput, generate --views cuda vs cpu)"
run views python3 benchmarks/gpu_views_check.py
ls "$out"
