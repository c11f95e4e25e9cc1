#!/usr/bin/env bash
# The GPU checks in one short run (what a lent GPU machine is used for; everything else runs on CPU):
#   1. the CUDA op tests: fused Triton forward/backward == reference, fp16/bf16 and extreme logits, model parity;
#   2. the cost study: latency and peak memory of each token mixer inside linglo_t, 256² to 4096²;
#   3. LinGlo vs its SPEC peers, bf16 autocast, 224² and 1024² (latency ratios; linglo bench).
# Usage: OUT=runs/gpu benchmarks/gpu_checks.sh   (from the repository root; works uninstalled via PYTHONPATH)
set -uo pipefail
OUT=${OUT:-runs/gpu}
mkdir -p "$OUT"
export PYTHONPATH=src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, timm, triton; print('torch', torch.__version__, 'timm', timm.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/gpu.txt"
timeout "${TEST_S:-240}" python3 -m pytest tests/ops/test_key_only_cuda.py -q -p no:cacheprovider -o addopts="" 2>&1 \
  | tail -25 | tee "$OUT/cuda_tests.txt"
timeout "${COST_S:-150}" python3 benchmarks/study.py cost --budget large --device cuda --results "$OUT" 2>&1 \
  | grep -v USDT | tail -25
timeout "${PEERS_S:-150}" python3 -m linglo.cli bench --models linglo_t+peers,linglo_s+peers,linglo_m+peers \
  --resolutions 224,1024 --device cuda --dtype bf16 --repeats 10 --throughput-batch 0 --skip-unsupported \
  --output "$OUT/peers" 2>&1 | grep -v USDT | tail -40
