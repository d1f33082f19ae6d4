"""Each speed lever's effect on the trainer's real step, measured in one interleaved run.

    OMP_NUM_THREADS=2 nice -n 10 python -m benchmarks.levers --batch 64 --steps 6

One trainer per variant (the CIFAR-10 preset of ``--method``, ResNet-18 with the CIFAR stem,
32 px, real CIFAR-10 images): the defaults, then one lever changed at a time
(``train.channels_last``, ``optim.fused``, ``train.amp``, ``train.compile``). Their steps are
timed interleaved (a, b, c, ..., a, b, c, ...) after warm-up rounds (compilation happens
there), so machine load hits them alike; images per second from the mean step time, and the
ratio to the defaults. A variant whose lever does not apply on the device (AMP bf16 on a CPU
without bf16 kernels, say) is still measured: that IS its effect there. Writes
``--out`` (default benchmarks/results/levers_<device type>.json) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.decode import commit, device_name
from benchmarks.throughput import rates, timed_interleaved
from selfsup.config import build_config, find_config, load_yaml, merge
from selfsup.methods import METHODS
from selfsup.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT.parent / "shared" / "data" / "cifar10.tar.gz"
# (name, config sections changed against the defaults)
LEVERS: list[tuple[str, dict]] = [
    ("defaults (channels_last, fused auto, amp auto, eager)", {}),
    ("train.channels_last=false", {"train": {"channels_last": False}}),
    ("optim.fused=true", {"optim": {"fused": True}}),
    ("optim.fused=false", {"optim": {"fused": False}}),
    ("train.amp=bf16", {"train": {"amp": "bf16"}}),
    ("train.amp=off", {"train": {"amp": "off"}}),
    ("train.compile=true", {"train": {"compile": True}}),
]


def lever_trainer(method: str, data: str, batch: int, steps: int, device: str, run_dir: str,
                  sections: dict, overrides: dict | None = None) -> Trainer:
    """The ``cifar10/<method>`` preset with ``overrides`` (the benchmark's sizes), then the lever."""
    raw = merge(load_yaml(find_config(f"cifar10/{method}")), {
        "data": {"path": data, "max_images": batch * (steps + 4)},
        "train": {"batch_size": batch, "epochs": 1, "device": device, "progress": False, "knn_every": 0,
                  "out_dir": run_dir},
    })
    return Trainer(build_config(merge(merge(raw, overrides or {}), sections), METHODS))


def measure(method: str, data: str, batch: int, steps: int, device: str, levers: list[tuple[str, dict]],
            overrides: dict | None = None, warmup: int = 2) -> list[dict]:
    """One row per lever: img/s of the trainer's step (mean, spread) and the ratio to the first."""
    with tempfile.TemporaryDirectory(prefix="selfsup-levers-") as run_dir:
        trainers = [lever_trainer(method, data, batch, steps + warmup, device, f"{run_dir}/{i}", sections, overrides)
                    for i, (_, sections) in enumerate(levers)]
        dev = trainers[0].dist.device

        def step_of(trainer: Trainer):
            batches = iter(trainer.splits.train.batches(batch, shuffle=True, seed=0, drop_last=True))

            def step() -> None:
                trainer.train_step([next(batches)])
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)

            return step

        times = timed_interleaved([step_of(t) for t in trainers], steps, warmup)
    rows = []
    for (name, _), trainer, seconds in zip(levers, trainers, times, strict=True):
        failure = getattr(trainer.forward, "failure", None)
        rows.append({"lever": name, **rates(batch, seconds), "precision": str(trainer.precision.dtype or "float32"),
                     "fused": bool(trainer.optimizer.defaults.get("fused")), "compile_failure": failure})
    for row in rows:
        row["vs_defaults"] = row["img_s"] / rows[0]["img_s"]
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| variant | img/s | vs defaults |", "|---|---:|---:|"]
    for r in rows:
        note = f" (compile fell back: {r['compile_failure']})" if r["compile_failure"] else ""
        lines.append(f"| {r['lever']}{note} | {r['img_s']:.1f} +- {r['std']:.1f} | {r['vs_defaults']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(CIFAR))
    p.add_argument("--method", default="simclr")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--device", default="auto")
    p.add_argument("--skip", nargs="*", default=[], help="levers left out (names as in the table)")
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    levers = [lever for lever in LEVERS if lever[0] not in args.skip]
    start = time.perf_counter()
    rows = measure(args.method, args.data, args.batch, args.steps, args.device, levers)
    dev = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                       "cpu" if args.device == "auto" else args.device)
    result = {"device": device_name(dev), "threads": torch.get_num_threads(), "method": args.method,
              "batch": args.batch, "steps": args.steps, "wall_s": round(time.perf_counter() - start, 1),
              "commit": commit(), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "torch": torch.__version__, "rows": rows}
    out = args.out or ROOT / "benchmarks" / "results" / f"levers_{dev.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.method}, batch {args.batch}, {result['device']}, {result['threads']} threads; mean +- std over "
          f"{args.steps} interleaved steps")
    print(table(rows))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
