#!/usr/bin/env bash
# Imagenette for a lent GPU machine, which does not get ../shared: copied into two ignored folders that each fit
# one call's 64 MiB carry (train 54 MiB, val 23 MiB), to be sent in two calls while the machine stays warm:
#   1. here:    benchmarks/device_data.sh
#   2. device:  run(carry=[".device_data/train"],
#                   command="mkdir -p /tmp/data/imagenette && cp -r .device_data/train /tmp/data/imagenette/")
#   3. device, right after (the machine stays warm for 30 s):
#               run(carry=[".device_data/val"], timeout_s=600,
#                   command="cp -r .device_data/val/. /tmp/data/imagenette/ && DATA=/tmp/data OUT=$OUT benchmarks/gpu_study.sh")
set -euo pipefail
SRC=${SRC:-../shared/data/imagenette}
rm -rf .device_data && mkdir -p .device_data/val
cp -rL "$SRC/train" .device_data/train
cp -rL "$SRC/val" .device_data/val/val
cp "$SRC/classes.txt" .device_data/val/
du -sh .device_data/*
