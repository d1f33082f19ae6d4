#!/usr/bin/env bash
# Prepares, on THIS machine, what benchmarks/gpu.sh needs on the device machine (which reaches
# no package index and cannot read ../shared/data): everything goes into .gpu/ (git-ignored),
# which the device call carries (see benchmarks/README.md, "The device script").
#   .gpu/data/cifar10/train/<class>/*.jpg  the first 800 real CIFAR-10 training JPEGs per class
#   .gpu/data/camvid/*.jpg                 the first 200 real CamVid train frames, as JPEG (q 95)
#   .gpu/whl/timm-<version>.whl            the timm of this checkout's environment (pure Python;
#                                          the device has torch, torchvision, numpy, PIL, scipy,
#                                          scikit-learn, PyYAML, tqdm, matplotlib: nothing else is
#                                          imported by the script's code paths)
# About 30 MB in all (the call carries at most 64 MiB with the working tree).
#   usage: bash benchmarks/gpu_prep.sh [python]   (run in the checkout's root)
set -euo pipefail
PY=${1:-python}
rm -rf .gpu
mkdir -p .gpu/whl
"$PY" -m benchmarks.gpu_bench --prepare .gpu/data
TIMM=$("$PY" -c "import timm; print(timm.__version__)")
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .gpu/whl "timm==$TIMM"
du -sh .gpu .gpu/*
