#!/bin/bash
# Session 3 performance runs, sequential on the idle 2-core CPU, default OpenMP wait policy.
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
