"""The trainer's kNN monitor: weighted kNN top-1 on the held-out split while training.

``train.knn_every`` epochs (and after the last one) the backbone's features of at most
``train.knn_max_train`` / ``train.knn_max_test`` images are compared (``online_knn`` in the
epoch's record); at the end the whole (``data.max_*``-capped) splits give ``knn.json``. Only
on rank 0 and only when both splits are labelled; otherwise it measures nothing.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from selfsup.data import cap
from selfsup.eval.knn import knn_accuracy
from selfsup.train.trainer import Trainer
from selfsup.views.features import extract_features


def knn_top1(trainer: Trainer, max_train: int, max_test: int) -> float | None:
    """kNN top-1 of the trainer's backbone on its held-out split (None without labels)."""
    splits, cfg = trainer.splits, trainer.cfg
    if splits.test is None or not splits.test.has_labels or not splits.train.has_labels:
        return None
    t, v = cfg.train, cfg.views
    args = (v.size, v.mean, v.std, t.eval_batch_size, trainer.dist.device)
    ftr, ytr = extract_features(trainer.method.backbone, cap(splits.train, max_train, t.seed), *args)
    fte, yte = extract_features(trainer.method.backbone, cap(splits.test, max_test, t.seed), *args)
    return knn_accuracy(ftr, ytr, fte, yte, len(splits.train.classes), t.knn_k, t.knn_temperature)


class OnlineKNN:
    """A :class:`selfsup.train.trainer.Monitor`: ``online_knn`` per epoch, ``knn.json`` at the end."""

    def after_epoch(self, trainer: Trainer) -> dict[str, Any]:
        t = trainer.cfg.train
        due = t.knn_every > 0 and (trainer.epoch % t.knn_every == 0 or trainer.epoch == t.epochs)
        if not (trainer.dist.is_main and due):
            return {}
        acc = knn_top1(trainer, t.knn_max_train, t.knn_max_test)
        return {} if acc is None else {"online_knn": acc}

    def after_fit(self, trainer: Trainer) -> dict[str, Any]:
        if not trainer.dist.is_main:
            return {}
        acc = knn_top1(trainer, 0, 0)
        if acc is None:
            return {}
        t = trainer.cfg.train
        result = {"method": trainer.cfg.method, "epochs": trainer.epoch, "steps": trainer.step, "knn_top1": acc,
                  "k": t.knn_k, "temperature": t.knn_temperature, "train_images": len(trainer.splits.train),
                  "test_images": len(trainer.splits.test)}
        (trainer.out / "knn.json").write_text(json.dumps(result, indent=2))
        print(f"kNN top-1 (k={t.knn_k}): {acc:.4f} -> {trainer.out / 'knn.json'}", file=sys.stderr)
        return {k: result[k] for k in ("knn_top1", "k", "temperature", "train_images", "test_images")}
