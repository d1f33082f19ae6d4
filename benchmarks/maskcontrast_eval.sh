#!/usr/bin/env bash
# Linear probe and k-means evaluation of the runs of benchmarks/maskcontrast_camvid.sh (+ random init),
# then the table: python benchmarks/maskcontrast_table.py RUNS_DIR
set -euo pipefail
DATA=../shared/data/camvid-trainval.tar.gz
RUNS=${1:-runs/mc}
for run in ${2:-mc_unsup mc_labels pixpro simclr}; do
  python -m selfsup.cli eval dense --checkpoint "$RUNS/$run" --data "$DATA" --scale 0.5 --epochs 10 --max-train 120 --device cpu
  python -m selfsup.cli eval cluster --checkpoint "$RUNS/$run" --data "$DATA" --scale 0.5 --seeds 5 --device cpu
done
# random init: the ResNet-18 (output stride 8) of pixpro/simclr, and MaskContrast's DeepLab-v3 (backbone + decoder)
for run in ${3:-pixpro mc_unsup}; do
  python -m selfsup.cli eval dense --checkpoint "$RUNS/$run" --data "$DATA" --scale 0.5 --epochs 10 --max-train 120 --device cpu --random-init
  python -m selfsup.cli eval cluster --checkpoint "$RUNS/$run" --data "$DATA" --scale 0.5 --seeds 5 --device cpu \
    --random-init --out "$RUNS/$run/cluster_random_init.json"
done
