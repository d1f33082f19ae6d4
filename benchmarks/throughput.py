"""Pre-training throughput vs the backbone's own ceiling, measured in one run.

    python benchmarks/throughput.py --data ../shared/data/cifar10.tar.gz --batch-size 256 --steps 3

For each method (SimCLR, BYOL; ResNet-18 with the CIFAR stem, 32 px, the CIFAR-10 presets):
- end-to-end: the trainer's real step (loader batch -> batched views -> method forward ->
  loss -> backward -> optimiser -> EMA hook), images/s;
- ceiling: the backbone alone, forward + backward on the same number of views
  (2 x batch), images/s;
- for BYOL also the method-inherent ceiling: ceiling plus the target network's forward,
  which BYOL cannot avoid.
Writes benchmarks/results/throughput.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from selfsup.config import build_config, load_yaml, merge
from selfsup.eval.online import OnlineKNN
from selfsup.methods import METHODS
from selfsup.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def timed_interleaved(fns: list, steps: int, warmup: int = 1) -> list[float]:
    """Best-of-``steps`` seconds per call of each function, calls interleaved (a, b, a, b, ...)
    so that load from other processes hits every candidate alike; ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    best = [float("inf")] * len(fns)
    for _ in range(steps):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def bench_method(method: str, data: str, batch: int, steps: int, device: str) -> dict:
    raw = merge(load_yaml(ROOT / f"configs/cifar10/{method}.yaml"), {
        "data": {"path": data, "max_images": batch * (steps + 2)},
        "train": {"batch_size": batch, "epochs": 1, "device": device, "progress": False,
                  "knn_every": 0, "out_dir": "/tmp/selfsup-throughput"},
    })
    trainer = Trainer(build_config(raw, METHODS), monitor=OnlineKNN())
    dev = trainer.dist.device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    batches = trainer.splits.train.batches(batch, shuffle=True, seed=0, drop_last=True)

    def end_to_end() -> None:
        trainer.train_step([next(batches)])
        sync()

    backbone = trainer.method.backbone
    views = torch.randn(2 * batch, 3, 32, 32, device=dev).contiguous(memory_format=torch.channels_last)

    def ceiling() -> None:
        _, pooled = backbone(views)
        pooled.sum().backward()
        sync()

    def ceiling_with_target() -> None:
        ceiling()
        with torch.no_grad():
            trainer.method.target.backbone(views)
        sync()

    fns = [end_to_end, ceiling] + ([ceiling_with_target] if method == "byol" else [])
    t_e2e, t_ceil, *t_inh = timed_interleaved(fns, steps)
    row = {"method": method, "batch": batch, "end_to_end_img_s": batch / t_e2e,
           "ceiling_img_s": batch / t_ceil, "ratio": t_ceil / t_e2e}
    if t_inh:
        row["inherent_ceiling_img_s"] = batch / t_inh[0]
        row["ratio_vs_inherent"] = t_inh[0] / t_e2e
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10.tar.gz"))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/throughput.json"))
    args = p.parse_args()
    rows = [bench_method(m, args.data, args.batch_size, args.steps, args.device) for m in ("simclr", "byol")]
    dev = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" \
        else f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"device: {dev}; batch {args.batch_size} images (= {2 * args.batch_size} views); "
          f"best of {args.steps} interleaved timed steps after 1 warm-up")
    print("| method | end-to-end img/s | ceiling img/s | end-to-end / ceiling |")
    print("|---|---|---|---|")
    for r in rows:
        extra = (f" ({r['ratio_vs_inherent']:.3f} vs ceiling + target forward, "
                 f"{r['inherent_ceiling_img_s']:.1f} img/s)") if "ratio_vs_inherent" in r else ""
        print(f"| {r['method']} | {r['end_to_end_img_s']:.1f} | {r['ceiling_img_s']:.1f} | "
              f"{r['ratio']:.3f}{extra} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": dev, "steps": args.steps, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
