#!/usr/bin/env bash
# The GPU checks, as one script for a lent GPU machine (the figures in docs/benchmarks.md
# and docs/lm.md come from its output). Run from the repo root:
#   bash benchmarks/gpu_checks.sh [OUTDIR]
# Packages the machine may lack (polars, datasets) are installed first from wheels in
# .whl/ when that folder exists (see ../.library/device/README.md for how they travel).
set -uo pipefail
out=${1:-${OUT:-/tmp/gpu-checks}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
step() { echo; echo "== $* ($(date +%T))"; }

step machine
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, pyarrow, transformers, polars; print('torch', torch.__version__, 'pyarrow', pyarrow.__version__, 'transformers', transformers.__version__, 'polars', polars.__version__)"

step "CUDA tests (tests/test_cuda.py, the CUDA cases of test_world and test_stream)"
timeout 300 python3 -m pytest -p no:cacheprovider -n 0 -q tests/test_cuda.py tests/test_world.py 2>&1 | tail -15

step "issue 9: LM generate (2 x Llama 8x1024, V=32k, topk:32, bf16) vs a bare bf16 forward"
timeout 420 python3 benchmarks/bench_lm_generate.py --device cuda --work /tmp/lm --repeats 2 2>&1 | grep -v "Writing model shards" | tee "$out/lm_generate.txt"

step "issue 9: a GPT student from that set on CUDA, bf16 (tokens/s of training)"
python3 -m cli generate --teacher hf:/tmp/lm/teacher-a --teacher hf:/tmp/lm/teacher-b --source /tmp/lm/corpus.parquet \
  --targets topk:32 --precision bf16 --device cuda --max-tokens-per-batch 32768 --out /tmp/lm/set --quiet
timeout 300 python3 -m cli train --transfer /tmp/lm/set --student train.students:gpt --student-arg width=512 --student-arg layers=6 --student-arg heads=8 \
  --tokens-per-batch 32768 --optimizer adamw --lr 1e-3 --epochs 2 --precision bf16 --device cuda --out /tmp/lm/student --quiet
python3 - <<'EOF' | tee "$out/lm_train.txt"
import json
for line in open("/tmp/lm/student/metrics.jsonl"):
    r = json.loads(line)
    print(f"epoch {r['epoch']}: {r['rows_per_s'] * 512:,.0f} tokens/s, {r['seconds']:.2f} s, train loss {r['train_loss']:.4f}")
EOF
ls "$out"
