"""Pre-training throughput against the same network's own step, measured in one run.

    python benchmarks/throughput.py --data ../shared/data/cifar10.tar.gz --batch-size 256 --steps 10

For each method (SimCLR, BYOL; ResNet-18 with the CIFAR stem, 32 px, the CIFAR-10 presets):
- end-to-end: the trainer's real step (loader batch -> batched views -> method forward ->
  loss -> backward -> optimiser step -> EMA hook);
- ceiling: the same backbone's forward + backward on tensors shaped like the views, joined in
  one batch as the method joins them (2 x batch), in the method's memory layout and precision,
  plus the SAME optimiser step over the method's parameters (its real optimiser, weight decay
  and LARS included): everything a step must do whatever its loss, so end-to-end / ceiling is
  the share of the time the method's own work (views, heads, loss, EMA) leaves to the backbone;
- for BYOL also the method-inherent ceiling: the ceiling plus the target network's forward
  over both views, which BYOL cannot avoid.
Both are timed interleaved (end-to-end, ceiling, end-to-end, ...) after warm-up rounds, so load
from other processes hits them alike; mean, standard deviation, min and max over ``--steps``
timed steps are reported for each. The ratio is that of the means.

Output: a Markdown table on stdout and a JSON file in ``--out`` (default: a new temporary
folder, printed); ``--update-results`` writes benchmarks/results/throughput.json instead, for
the committed results page. The trainer's run folder is a temporary one too.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from selfsup.config import build_config, find_config, load_yaml, merge
from selfsup.methods import METHODS
from selfsup.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "throughput.json"


def timed_interleaved(fns: list, steps: int, warmup: int = 2) -> list[list[float]]:
    """Seconds of every call of each function, calls interleaved (a, b, a, b, ...) after
    ``warmup`` untimed rounds."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(steps):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - start)
    return times


def rates(batch: int, seconds: list[float]) -> dict[str, float]:
    """Images per second: mean (from the mean time), spread and extremes over the timed steps."""
    per_step = [batch / s for s in seconds]
    return {"img_s": batch / statistics.fmean(seconds), "std": statistics.stdev(per_step),
            "min": min(per_step), "max": max(per_step)}


def bench_method(method: str, data: str, batch: int, steps: int, device: str, run_dir: str,
                 overrides: dict | None = None) -> dict:
    """One method's row; ``overrides``: config sections merged over the preset (tests shrink it)."""
    raw = merge(load_yaml(find_config(f"cifar10/{method}")), {
        "data": {"path": data, "max_images": batch * (2 * steps + 6)},
        "train": {"batch_size": batch, "epochs": 1, "device": device, "progress": False,
                  "knn_every": 0, "out_dir": run_dir},
    })
    raw = merge(raw, overrides or {})
    trainer = Trainer(build_config(raw, METHODS))
    dev = trainer.dist.device
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    batches = trainer.splits.train.batches(batch, shuffle=True, seed=0, drop_last=True)
    size = trainer.cfg.views.size

    def end_to_end() -> None:
        trainer.train_step([next(batches)])
        sync()

    backbone, optimizer = trainer.method.backbone, trainer.optimizer
    layout = torch.channels_last if trainer.cfg.train.channels_last else torch.contiguous_format
    n_views = len(trainer.specs) * batch  # the views of a step, joined in one backbone batch
    views = torch.randn(n_views, 3, size, size, device=dev).contiguous(memory_format=layout)
    autocast = torch.autocast(dev.type, dtype=trainer.precision.dtype, enabled=trainer.precision.dtype is not None)

    def ceiling() -> None:
        with autocast:
            _, pooled = backbone(views)
        pooled.float().sum().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        sync()

    # an EMA target network (BYOL's target, MoCo's momentum encoder) runs a forward the method cannot avoid
    target = getattr(trainer.method, "target", None) or getattr(trainer.method, "momentum_encoder", None)

    def ceiling_with_target() -> None:
        with torch.no_grad(), autocast:
            target.backbone(views)
        ceiling()

    fns = [end_to_end, ceiling] + ([ceiling_with_target] if target is not None else [])
    e2e, ceil, *inherent = (rates(batch, t) for t in timed_interleaved(fns, steps))
    row = {"method": method, "batch": batch, "views_per_step": n_views, "end_to_end": e2e, "ceiling": ceil,
           "ratio": e2e["img_s"] / ceil["img_s"], "layout": "channels_last" if layout == torch.channels_last
           else "contiguous", "precision": str(trainer.precision.dtype or "float32"),
           "batching": "both views in one backbone batch"}
    if inherent:
        row["inherent_ceiling"] = inherent[0]
        row["ratio_vs_inherent"] = e2e["img_s"] / inherent[0]["img_s"]
    return row


def output_path(out: str | None, update_results: bool) -> Path:
    """Where the JSON goes: the committed results only when asked, else ``out`` or a new temporary folder."""
    path = RESULTS if update_results else Path(out or tempfile.mkdtemp(prefix="selfsup-throughput-"))
    return path if path.suffix == ".json" else path / "throughput.json"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10.tar.gz"))
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="timed steps of each candidate (at least 2)")
    p.add_argument("--device", default="auto")
    p.add_argument("--out", help="folder of the result JSON (default: a new temporary folder)")
    p.add_argument("--update-results", action="store_true", help=f"write {RESULTS.relative_to(ROOT)} instead")
    args = p.parse_args()
    if args.steps < 2:
        p.error("--steps must be at least 2 (the spread needs two timings)")
    out = output_path(args.out, args.update_results)
    with tempfile.TemporaryDirectory(prefix="selfsup-throughput-run-") as run_dir:
        rows = [bench_method(m, args.data, args.batch_size, args.steps, args.device, run_dir)
                for m in ("simclr", "byol")]
    dev = "cuda: " + torch.cuda.get_device_name() if torch.cuda.is_available() and args.device != "cpu" \
        else f"cpu: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"device: {dev}; batch {args.batch_size} images (= {2 * args.batch_size} views, one backbone batch); "
          f"{rows[0]['layout']}, {rows[0]['precision']}; mean +- std over {args.steps} interleaved timed steps "
          "after 2 warm-up rounds")
    print("| method | end-to-end img/s | ceiling img/s (same views, fwd + bwd + optimiser step) "
          "| end-to-end / ceiling |")
    print("|---|---:|---:|---:|")
    for r in rows:
        e, c = r["end_to_end"], r["ceiling"]
        extra = (f" ({r['ratio_vs_inherent']:.3f} vs ceiling + target forward, "
                 f"{r['inherent_ceiling']['img_s']:.1f} img/s)") if "ratio_vs_inherent" in r else ""
        print(f"| {r['method']} | {e['img_s']:.1f} +- {e['std']:.1f} | {c['img_s']:.1f} +- {c['std']:.1f} | "
              f"{r['ratio']:.3f}{extra} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"device": dev, "steps": args.steps, "rows": rows}, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
