"""Random-initialisation baselines of the networks the colour pretext methods evaluate.

    python benchmarks/pretext_random_init.py --methods colorization cmc --images 3000 --test-images 2000

``benchmarks/instance_methods.py``'s random-init row is a plain RGB ResNet-18. Colorization
evaluates a network that sees only the L channel, CMC two networks (L and ab) whose features are
concatenated; their untrained versions are the baselines that say whether pre-training helped
(and how much the architecture alone changes). Same protocol and splits as
``instance_methods.py`` (its ``config_for``, ``eval_splits`` and ``evaluate``): the method's
preset with the shared backbone, built with ``--seed``, the views' normalisation set
(``on_fit_start``: for colorization it also estimates its colour prior, which the features
ignore), then kNN and the linear probe. For colorization also the chance level of its pretext
accuracy: the colour-bin accuracy on the evaluation images of always predicting the most
frequent bin of the training prior (grey, mostly). Writes ``--out`` (JSON) and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from instance_methods import ROOT, config_for, eval_splits, evaluate

from selfsup.data import ImageDataset
from selfsup.methods import METHODS, RunInfo
from selfsup.methods.colorization import Colorization
from selfsup.models.backbones import build_backbone
from selfsup.train.trainer import seed_everything
from selfsup.views.lab import nearest_bin
from selfsup.views.recipes import eval_view


@torch.no_grad()
def mode_bin_accuracy(method: Colorization, test: ImageDataset, cfg) -> float:
    """Share of the target pixels of ``test`` whose nearest bin is the training prior's mode."""
    v, hits, total = cfg.views, 0, 0
    mode = method.prior.argmax()
    for batch in test.batches(512, shuffle=False, drop_last=False):
        bins = nearest_bin(method.target_ab(eval_view(batch.images, v.size, v.mean, v.std)), method.bins)
        hits, total = hits + (bins == mode).sum().item(), total + len(bins)
    return hits / total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/cifar10.tar.gz"))
    p.add_argument("--methods", nargs="+", default=["colorization", "cmc"])
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--test-images", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--cifar-stem", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default="/tmp/selfsup-pretext-random")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/pretext_colour_random_init.json"))
    args = p.parse_args()
    # the fields instance_methods.config_for / eval_splits read, at their defaults
    vars(args).update(epochs=1, warmup_epochs=0.0, device="cpu", knn_every=0, set=[], validation=False)
    rows = []
    for name in args.methods:
        cfg = config_for(name, args, Path(args.workdir))
        splits = eval_splits(cfg, args)
        seed_everything(args.seed)
        method = METHODS[name](build_backbone(cfg.backbone), cfg.params, RunInfo(num_images=len(splits.train)))
        method.on_fit_start(splits.train, cfg.views, torch.device("cpu"))
        rows.append({"method": f"random init ({name} network)", **evaluate(method.backbone, splits, cfg,
                                                                           torch.device("cpu"))})
        if isinstance(method, Colorization):
            rows[-1]["mode_bin_accuracy"] = mode_bin_accuracy(method, splits.test, cfg)
            rows[-1]["mode_bin"] = method.bins[method.prior.argmax()].tolist()
        print(json.dumps(rows[-1]), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print("| network | kNN top-1 | linear top-1 (last) |\n|---|---:|---:|")
    for r in rows:
        print(f"| {r['method']} | {r['knn_top1']:.3f} | {r['linear_last_top1']:.3f} |")


if __name__ == "__main__":
    main()
