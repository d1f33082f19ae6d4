"""The MaskContrast CamVid table from the run folders of benchmarks/maskcontrast_camvid.sh and
benchmarks/maskcontrast_eval.sh: ``python benchmarks/maskcontrast_table.py runs/mc``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROWS = [("maskcontrast, unsupervised saliency (OpenCV fine-grained)", "mc_unsup", ""),
        ("maskcontrast, masks from CamVid object classes (supervised-saliency analogue)", "mc_labels", ""),
        ("maskcontrast from the simclr run's backbone, unsupervised saliency", "mc_unsup_init", ""),
        ("maskcontrast from the simclr run's backbone, masks from CamVid object classes", "mc_labels_init", ""),
        ("pixpro", "pixpro", ""), ("simclr", "simclr", ""),
        ("random init (ResNet-18, output stride 8)", "pixpro", "_random_init"),
        ("random init (DeepLab-v3: ResNet-18 + decoder)", "mc_unsup", "_random_init")]


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def main() -> None:
    runs = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/mc")
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "benchmarks/results/maskcontrast_camvid.json")
    rows = []
    for name, run, suffix in ROWS:
        if not (runs / run).is_dir():
            continue
        dense, cluster = _load(runs / run / f"dense{suffix}.json"), _load(runs / run / f"cluster{suffix}.json")
        time_file = runs / run / ".." / f"{run}.time"
        wall = None if suffix or not time_file.is_file() else time_file.read_text().split()[0]
        metrics = [json.loads(x) for x in (runs / run / "metrics.jsonl").read_text().splitlines()] if not suffix else []
        summary = [m for m in metrics if "summary" in m]
        rows.append({
            "name": name, "run": str(runs / run), "random_init": bool(suffix),
            "linear_miou": dense and dense["miou"],
            "kmeans_pixel_miou": cluster and cluster["pixel"]["miou"],
            "kmeans_maskcontrast_miou": cluster and cluster.get("maskcontrast", {}).get("miou"),
            "steps": summary[-1]["step"] if summary else None,
            "final_loss": summary[-1]["summary"]["loss"] if summary else None,
            "pretrain_wall_s": float(wall) if wall else None,
        })
    out.write_text(json.dumps({"rows": rows}, indent=2))

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    def ms(v):
        return "-" if v is None else f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}"

    print("| row | linear mIoU | k-means mIoU (pixel, K = 11) | k-means mIoU (MaskContrast, K = 6 + bg) | "
          "steps | pretrain wall s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['name']} | {pct(r['linear_miou'])} | {ms(r['kmeans_pixel_miou'])} | "
              f"{ms(r['kmeans_maskcontrast_miou'])} | {r['steps'] or '-'} | "
              f"{'-' if r['pretrain_wall_s'] is None else round(r['pretrain_wall_s'])} |")


if __name__ == "__main__":
    main()
