#!/usr/bin/env bash
# The device script (issue 28): CUDA checks (AMP, channels_last, compile, sync-free step),
# end-to-end throughput against the backbone ceiling, GPU views, the loader, the levers; at most
# 8 minutes on one H100. Needs .gpu/ from benchmarks/gpu_prep.sh (carried with the call).
# Writes $OUT/gpu.json, $OUT/gpu.md, $OUT/log.txt, $OUT/env.txt and prints the table last.
# Extra arguments go to benchmarks/gpu_bench.py (`bash benchmarks/gpu.sh --cpu`: the dry run here).
set -uo pipefail
OUT=${OUT:-$(mktemp -d)}
mkdir -p "$OUT"
if ls .gpu/whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .gpu/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 SELFSUP_CACHE=/tmp/selfsup-cache
{ nvidia-smi; python3 -c "import torch, torchvision, timm; print(torch.__version__, torchvision.__version__,
timm.__version__, torch.cuda.get_device_name())"; } >"$OUT/env.txt" 2>&1
# sections start only within the first 420 s; the whole run is cut at 480 s (8 min)
timeout 480 python3 -m benchmarks.gpu_bench --data .gpu/data --out "$OUT" --budget-s 420 "$@" >"$OUT/log.txt" 2>&1
rc=$?
tail -n 40 "$OUT/log.txt"
if [ ! -f "$OUT/gpu.md" ] && [ -f "$OUT/gpu.json" ]; then  # cut short: the table of what was measured
    python3 -m benchmarks.gpu_bench --table "$OUT/gpu.json" && echo "(rc $rc: partial)" && cat "$OUT/gpu.md"
fi
exit $rc
