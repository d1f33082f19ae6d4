"""The device script's dry run (``benchmarks/gpu_bench.py --cpu``) on real CIFAR-10 images and
CamVid frames: every section runs on the CPU at shrunk sizes and lands in the JSON and the
Markdown table, so the script cannot rot while no GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_writes_every_section(cifar_subset, camvid_small, tmp_path):
    data = tmp_path / "data"
    (data / "camvid").mkdir(parents=True)
    (data / "cifar10").symlink_to(cifar_subset(4, 0), target_is_directory=True)  # 40 real images
    for png in sorted((camvid_small / "train").glob("*.png")):  # 8 real frames, as --prepare writes them
        Image.open(png).convert("RGB").save(data / "camvid" / f"{png.stem}.jpg", "JPEG", quality=95)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_bench", "--cpu", "--data", str(data),
                           "--out", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    record = json.loads((out / "gpu.json").read_text())
    sections = record["sections"]
    assert record["mode"] == "cpu dry run" and record["environment"]["device"].startswith("cpu")
    assert set(sections) == {"checks", "throughput", "views", "loader", "levers"}
    assert "Traceback" not in done.stderr, done.stderr[-3000:]

    checks = {c["name"]: c for c in sections["checks"]}
    assert checks["amp"]["pass"] and checks["amp"]["precision"] == "torch.bfloat16"
    assert checks["channels_last"]["pass"] and checks["channels_last"]["weights_channels_last"]
    assert checks["compile"]["pass"] and checks["compile"]["failure"] is None
    for method in ("simclr", "byol", "mocov3", "mae"):
        sync = checks[f"sync-free step {method}"]
        assert sync["pass"] is None and sync["steps"] == 3 and sync["mode"].startswith("unavailable")

    rows = sections["throughput"]
    assert [(r["method"], r["setup"]) for r in rows] == [
        ("simclr", "big"), ("byol", "big"), ("mocov3", "big"),
        ("simclr", "cifar"), ("byol", "cifar"), ("mocov3", "cifar"), ("mae", "big")]
    for r in rows:
        assert r["ratio"] > 0 and r["end_to_end"]["img_s"] > 0, r
    assert all("ratio_vs_inherent" in r for r in rows if r["method"] in ("byol", "mocov3"))
    assert rows[-1]["views_per_step"] == rows[-1]["batch"]  # MAE: one view per image
    assert sections["views"]["device_img_s"] > 0 and sections["views"]["ratio_per_core"] > 0
    loaders = {r["loader"]: r for r in sections["loader"]["rows"]}
    assert set(loaders) == {"selfsup decode=device", "selfsup decode=cpu", "torchvision ImageFolder"}
    assert all(r["images"] == 48 for r in loaders.values())  # the whole re-encoded folder, 3 x 16
    assert sections["levers"][0]["lever"].startswith("defaults") and len(sections["levers"]) >= 5

    table = (out / "gpu.md").read_text()
    for target in ("SimCLR end-to-end / ceiling >= 0.95 at 224 px", "views on the device >= 20x",
                   "loader (decode=device) >= 3000 img/s"):
        line = next(line for line in table.splitlines() if target in line)
        assert line.endswith(("| PASS |", "| FAIL |"))
    assert "| check: sync-free step simclr |  | NOT CHECKED (no CUDA) |" in table
    assert "| mae | vit_tiny_patch16_224 / 64 | 4 |" in table
