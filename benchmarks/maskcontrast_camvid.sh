#!/usr/bin/env bash
# MaskContrast vs PixPro / SimCLR on CamVid, same budget (see benchmarks/README.md); the four
# pre-training runs go in parallel (the machine is shared: each gets its share of the cores).
#   bash benchmarks/maskcontrast_camvid.sh [RUNS_DIR] [EPOCHS]; then benchmarks/maskcontrast_eval.sh
# INIT=RUNS_DIR/simclr/backbone.pth bash benchmarks/maskcontrast_camvid.sh RUNS_DIR EPOCHS: only the two
# MaskContrast runs, started from that exported backbone (the paper starts from MoCo v2), as mc_*_init.
set -euo pipefail
DATA=../shared/data/camvid-trainval.tar.gz
RUNS=${1:-runs/mc}
EPOCHS=${2:-3}
COMMON=(--data "$DATA" --epochs "$EPOCHS" --batch-size 32
        --set views.size=64 data.load_size=180 backbone.output_stride=8 optim.warmup_epochs=0 train.progress=false)
mkdir -p "$RUNS"
[ -d "$RUNS/masks_unsup" ] || python -m selfsup.cli saliency --data "$DATA" --method fine-grained --load-size 180 240 \
  --out "$RUNS/masks_unsup"
[ -d "$RUNS/masks_labels" ] || python benchmarks/camvid_label_masks.py --data "$DATA" --out "$RUNS/masks_labels"
INIT=${INIT:-}
SUFFIX=${INIT:+_init}
for masks in unsup labels; do
  run=mc_$masks$SUFFIX
  /usr/bin/time -f "%e s" -o "$RUNS/$run.time" python -m selfsup.cli pretrain --method maskcontrast \
    --config camvid/maskcontrast --masks "$RUNS/masks_$masks" --skip-missing --out "$RUNS/$run" \
    "${COMMON[@]}" ${INIT:+--set backbone.init="$INIT"} > "$RUNS/$run.log" 2>&1 &
done
[ -n "$INIT" ] && { wait; exit 0; }
for m in pixpro simclr; do
  /usr/bin/time -f "%e s" -o "$RUNS/$m.time" python -m selfsup.cli pretrain --method $m \
    --config camvid/$m --out "$RUNS/$m" "${COMMON[@]}" > "$RUNS/$m.log" 2>&1 &
done
wait
