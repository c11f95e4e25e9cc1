#!/bin/bash
# Session 3 performance runs, sequential on the idle 2-core CPU, default OpenMP wait policy.
# Saved in docs/perf/cpu as: op_reuse -> op_cold.csv, op_system -> op_cold_system.csv, op_heads2 -> op_cold_heads2.csv,
# op_warm -> op_warm.csv, op_warm_heads2 -> op_warm_heads2.csv, mixers -> mixers_in_model.csv; the model runs of the
# first part were overwritten by the second.
unset OMP_WAIT_POLICY
cd /work/main
set -x
uptime
python benchmarks/op_scaling.py --threads 2 --repeats 30 --output runs/perf3/op_reuse > runs/perf3/op_reuse.log 2>&1
python benchmarks/op_scaling.py --threads 2 --repeats 30 --allocator system --output runs/perf3/op_system > runs/perf3/op_system.log 2>&1
python benchmarks/op_scaling.py --threads 2 --repeats 30 --heads 2 --output runs/perf3/op_heads2 > runs/perf3/op_heads2.log 2>&1
uptime
for a in reuse system; do
linglo bench --models linglo_t,linglo_s,convnext_atto,edgenext_x_small,efficientvit_b1 --resolutions 512,1024,2048 \
  --threads 2 --warmup 1 --repeats 5 --throughput-batch 0 --allocator $a --output runs/perf3/scale_$a > runs/perf3/scale_$a.log 2>&1
done
uptime
linglo bench --models linglo_t+peers,linglo_xs+peers,linglo_s+peers,linglo_m+peers --resolutions 224,1024 \
  --threads 2 --warmup 1 --repeats 7 --skip-unsupported --output runs/perf3/peers > runs/perf3/peers.log 2>&1
uptime
linglo bench --models linglo_t+peers,linglo_xs+peers,linglo_s+peers,linglo_m+peers --resolutions 224,1024 \
  --threads 2 --warmup 1 --repeats 7 --skip-unsupported --channels-last --output runs/perf3/peers_cl > runs/perf3/peers_cl.log 2>&1
uptime
# --- after the banded MLP, the dense small-map path and --warm-visits (these made the model tables) ---
unset OMP_WAIT_POLICY
cd /work/main
set -x
uptime
linglo bench --models linglo_t+peers,linglo_xs+peers,linglo_s+peers,linglo_m+peers --resolutions 224,1024 \
  --threads 2 --warmup 1 --repeats 7 --skip-unsupported --output runs/perf3/peers > runs/perf3/peers.log 2>&1
linglo bench --models linglo_t+peers,linglo_xs+peers,linglo_s+peers,linglo_m+peers --resolutions 224,1024 \
  --threads 2 --warmup 1 --repeats 7 --skip-unsupported --channels-last --output runs/perf3/peers_cl > runs/perf3/peers_cl.log 2>&1
uptime
for a in reuse system; do
linglo bench --models linglo_t,linglo_s,convnext_atto,edgenext_x_small,efficientvit_b1 --resolutions 512,1024,2048 \
  --threads 2 --warmup 1 --repeats 5 --throughput-batch 0 --allocator $a --output runs/perf3/scale_$a > runs/perf3/scale_$a.log 2>&1
done
linglo bench --models "linglo_t,linglo_t[token_mixer=linear],linglo_t[token_mixer=none],linglo_s,linglo_s[token_mixer=linear]" \
  --resolutions 224,1024 --threads 2 --warmup 1 --repeats 7 --throughput-batch 0 --output runs/perf3/mixers > runs/perf3/mixers.log 2>&1
uptime
python benchmarks/op_scaling.py --threads 2 --repeats 30 --output runs/perf3/op_warm
python benchmarks/op_scaling.py --threads 2 --repeats 30 --heads 2 --output runs/perf3/op_warm_heads2
