"""What a run folder holds, read without rebuilding anything: metrics, config, environment,
evaluation results and their pictures, and what is missing."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selfsup.core.errors import ConfigError

# the evaluations a report looks for, with the command that writes each
EVALUATIONS = {
    "knn": "selfsup eval knn (or the end of pretrain)",
    "linear": "selfsup eval linear",
    "dense": "selfsup eval dense",
    "cluster": "selfsup eval cluster",
}
NOT_RESULTS = ("environment.json",)  # JSON in a run folder that is not an evaluation result

# the headline numbers of the summary / comparison table: (result file stem, key path) -> column
HEADLINE = {
    ("knn", "knn_top1"): "kNN top-1",
    ("knn_random_init", "knn_top1"): "kNN top-1, random init",
    ("linear", "last_epoch_top1"): "linear top-1",
    ("linear_random_init", "last_epoch_top1"): "linear top-1, random init",
    ("align", "alignment"): "alignment",
    ("align", "uniformity"): "uniformity",
    ("dense", "miou"): "dense mIoU",
    ("dense", "finetune.miou"): "dense mIoU, fine-tuned",
    ("dense_random_init", "miou"): "dense mIoU, random init",
    ("cluster", "pixel.miou.mean"): "cluster mIoU (pixel)",
    ("cluster", "maskcontrast.miou.mean"): "cluster mIoU (maskcontrast)",
    ("attentive", "last_epoch_top1"): "attentive probe top-1",
    ("attentive_random_init", "last_epoch_top1"): "attentive probe top-1, random init",
    ("finetune", "last_epoch_top1"): "fine-tuned top-1",
    ("finetune_random_init", "last_epoch_top1"): "fine-tuned top-1, random init",
    ("reconstruct", "masked_mse"): "reconstruction MSE (masked patches)",
    ("reconstruct", "decoder_on_encoder_mse"): "CAE decoder-on-encoder MSE",
}


def lookup(record: dict[str, Any], key: str) -> Any:
    """``record["a"]["b"]`` for the key path ``a.b``, ``record["a"][0]`` for ``a.0`` (None where
    any part is absent)."""
    value: Any = record
    for part in key.split("."):
        if isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return None
    return value


@dataclass
class RunFolder:
    """A run folder's files, parsed. ``steps``: the per-step records of ``metrics.jsonl``;
    ``epochs``: its per-epoch records; ``results``: every evaluation JSON by file stem;
    ``pictures``: the PNGs of each result (``dense.png``, ``cluster_pixel.png``);
    ``missing``: one phrase per expected file that is absent."""

    path: Path
    name: str
    steps: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    config: dict[str, Any] | None = None
    environment: dict[str, Any] | None = None
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    pictures: dict[str, list[Path]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    @property
    def has_checkpoint(self) -> bool:
        return (self.path / "last.pt").is_file()

    @property
    def method(self) -> str:
        return str((self.config or {}).get("method", "?"))

    def budget(self) -> dict[str, Any]:
        """Steps, images seen (steps x global batch), training wall time (the epochs' sum),
        images/s over it, and the device: what the numbers cost."""
        out: dict[str, Any] = {}
        records = self.steps + self.epochs
        if records:
            out["epochs"] = max(r.get("epoch", 0) for r in records)
            out["steps"] = max(r.get("step", 0) for r in records)
            batch = lookup(self.config or {}, "train.batch_size")
            if batch is not None:
                out["images_seen"] = out["steps"] * batch
            times = [r["summary"]["epoch_time_s"] for r in self.epochs if "epoch_time_s" in r.get("summary", {})]
            if times:
                out["wall_time_s"] = sum(times)
                if "images_seen" in out and out["wall_time_s"] > 0:
                    out["images_per_s"] = out["images_seen"] / out["wall_time_s"]
        if self.environment:
            out["device"] = self.environment.get("device")
            out["device_name"] = self.environment.get("device_name")
            out["world_size"] = self.environment.get("world_size")
        return out


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path}: not readable as JSON ({e})") from None


def read_run(path: str | Path, name: str | None = None) -> RunFolder:
    """Parse a run folder (or the folder of a ``last.pt``); what is absent is listed in ``missing``."""
    root = Path(path)
    if root.is_file():
        root = root.parent
    if not root.is_dir():
        raise ConfigError(f"report: run folder {root} does not exist")
    run = RunFolder(root, name or root.name)
    metrics = root / "metrics.jsonl"
    if metrics.is_file():
        for number, line in enumerate(metrics.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise ConfigError(f"{metrics}:{number}: not a JSON line") from None
            (run.epochs if "summary" in record else run.steps).append(record)
    else:
        run.missing.append("metrics.jsonl (training curves)")
    if (root / "config.yaml").is_file():
        run.config = yaml.safe_load((root / "config.yaml").read_text())
    else:
        run.missing.append("config.yaml (the run's configuration)")
    if (root / "environment.json").is_file():
        run.environment = _read_json(root / "environment.json")
    else:
        run.missing.append("environment.json (device and software versions of the run)")
    if not run.has_checkpoint:
        run.missing.append("last.pt (t-SNE, retrieval and view previews need the checkpoint)")
    for file in sorted(root.glob("*.json")):
        if file.name in NOT_RESULTS:
            continue
        result = _read_json(file)
        if isinstance(result, dict):
            run.results[file.stem] = result
            run.pictures[file.stem] = []
    for picture in sorted(root.glob("*.png")):
        owner = _owner(picture.stem, run.results)
        if owner is not None:
            run.pictures[owner].append(picture)
    for kind, command in EVALUATIONS.items():
        if kind not in run.results:
            run.missing.append(f"{kind}.json ({command})")
    return run


def _owner(picture: str, stems: Iterable[str]) -> str | None:
    """The result a picture belongs to: the longest stem it equals or extends with ``_...``
    (``dense_random_init.png`` is ``dense_random_init.json``'s, ``cluster_pixel.png`` ``cluster.json``'s)."""
    owners = [s for s in stems if picture == s or picture.startswith(f"{s}_")]
    return max(owners, key=len) if owners else None
