#!/usr/bin/env bash
# The GPU protocol (configs/study/gpu-bytes.yaml) on one H100/H200, about 10 minutes:
#   scripts/gpu_study.sh            # throughput first, then the study, then the analysis
#   scripts/gpu_study.sh --dry-run  # what it would run (works without a GPU)
# Writes docs/results/gpu-bytes/: throughput.txt, runs/ (the committed records), the report.
set -euo pipefail
cd "$(dirname "$0")/.."
out=docs/results/gpu-bytes
python -m data.prepare data=shakespeare_bytes
if [ "${1:-}" = "--dry-run" ]; then
  python scripts/run_study.py gpu-bytes --jobs 8 --records "$out/runs" --dry-run
  exit 0
fi
mkdir -p "$out"
# Throughput at the start: the proxy's tokens/s and MFU on this GPU, AdamW, eager bf16.
python scripts/bench_train.py model=proxy-6x384 data=shakespeare_bytes batch_size=64 \
  block_size=512 dtype=bfloat16 device=cuda --steps 30 | tee "$out/throughput.txt"
python scripts/run_study.py gpu-bytes --jobs 8 --records "$out/runs" --skip-analysis
python scripts/analyze_study.py "$out/runs" --out "$out"
