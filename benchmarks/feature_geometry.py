"""Why a run's kNN and linear probe disagree: the geometry of its frozen features.

    python benchmarks/feature_geometry.py RUN_DIR [RUN_DIR ...] \
        --out benchmarks/results/feature_geometry.json

For each pre-training run folder (its ``last.pt``) and for random initialisation of the first
run's architecture (seeded as in ``instance_methods.py``), on the run's own capped CIFAR splits
and evaluation view:

- the share of the training features' variance on their first principal component, the
  absolute value of that component's correlation with two per-image colour statistics (mean
  brightness, and mean blue minus mean red; a component's sign is arbitrary), and the share of
  its variance explained by the class means;
- weighted kNN top-1 (k = 200, T = 0.1) on the raw features (the benchmark's number), on
  centred features, and on centred features with the top r principal components removed
  (r = 1, 2, 5); the mean and the components are estimated on the training features only;
- linear-probe top-1 (last epoch) as in the benchmark (no weight decay), and with the weight
  decay chosen on a held-out 20 % of the TRAINING features, then retrained on all of them
  (``selfsup.eval.linear.linear_probe_chosen_decay``; the test split takes no part in the choice).

Writes the rows as JSON and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from saved_runs import splits_and_random_init

from selfsup.data.dataset import ImageDataset
from selfsup.eval.knn import knn_accuracy
from selfsup.eval.linear import linear_probe, linear_probe_chosen_decay
from selfsup.train.runs import load_run
from selfsup.views.features import extract_features


def colour_statistics(dataset: ImageDataset) -> dict[str, torch.Tensor]:
    """Per-image mean brightness and mean blue-minus-red of the raw images, in dataset order."""
    x = torch.cat([b.images.float() / 255 for b in dataset.batches(512, shuffle=False, drop_last=False)])
    return {"brightness": x.mean((1, 2, 3)), "blue_minus_red": (x[:, 2] - x[:, 0]).mean((1, 2))}


def principal_components(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean (C,), principal directions (C, C) as rows, and the variance share of each."""
    mean = train.mean(0)
    _, sv, vh = torch.linalg.svd(train - mean, full_matrices=False)
    return mean, vh, sv.square() / sv.square().sum()


def geometry_row(name: str, backbone: torch.nn.Module, train: ImageDataset, test: ImageDataset, views,
                 colours: dict[str, torch.Tensor]) -> dict:
    ftr, ytr = extract_features(backbone, train, views.size, views.mean, views.std)
    fte, yte = extract_features(backbone, test, views.size, views.mean, views.std)
    n_cls = len(train.classes)
    mean, pcs, share = principal_components(ftr)
    pc1 = (ftr - mean) @ pcs[0]
    class_means = torch.stack([pc1[ytr == c].mean() for c in range(n_cls)])
    corr = {f"pc1_abs_corr_{k}": torch.corrcoef(torch.stack([pc1, v]))[0, 1].abs().item() for k, v in colours.items()}
    row = {"run": name, "pc1_variance_share": share[0].item(),
           "pc1_class_variance_share": (class_means.var(unbiased=False) / pc1.var(unbiased=False)).item(), **corr,
           "knn_raw": knn_accuracy(ftr, ytr, fte, yte, n_cls)}
    for r in (0, 1, 2, 5):
        drop = pcs[:r]
        a, b = ftr - mean, fte - mean
        row[f"knn_centred_drop{r}"] = knn_accuracy(a - a @ drop.T @ drop, ytr, b - b @ drop.T @ drop, yte, n_cls)
    row["linear_last"] = linear_probe(ftr, ytr, fte, yte, n_cls).last_epoch_accuracy
    choice = linear_probe_chosen_decay(ftr, ytr, fte, yte, n_cls)
    row["linear_chosen_wd"], row["linear_last_chosen_wd"] = choice.weight_decay, choice.result.last_epoch_accuracy
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", help="pre-training run folders (with last.pt)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random-initialisation row")
    p.add_argument("--out", default=None, help="JSON file for the rows")
    args = p.parse_args()
    cfg, train, test, fresh = splits_and_random_init(args.runs[0], None, args.seed)
    colours = colour_statistics(train)
    rows = [geometry_row("random init", fresh.backbone, train, test, cfg.views, colours)]
    for run in args.runs:
        run_cfg, method = load_run(run)
        if (run_cfg.data.max_images, run_cfg.data.max_test_images) != (cfg.data.max_images, cfg.data.max_test_images):
            raise SystemExit(f"{run}: data.max_images / max_test_images differ from {args.runs[0]}'s")
        rows.append(geometry_row(str(run), method.backbone, train, test, run_cfg.views, colours))
        print(json.dumps(rows[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    cols = ["pc1_variance_share", "pc1_abs_corr_blue_minus_red", "pc1_abs_corr_brightness", "pc1_class_variance_share",
            "knn_raw", "knn_centred_drop0", "knn_centred_drop2", "knn_centred_drop5", "linear_last",
            "linear_last_chosen_wd"]
    print("| run | " + " | ".join(cols) + " | chosen wd |")
    print("|---|" + "---:|" * (len(cols) + 1))
    for r in rows:
        print(f"| {r['run']} | " + " | ".join(f"{r[c]:.3f}" for c in cols) + f" | {r['linear_chosen_wd']:g} |")


if __name__ == "__main__":
    main()
