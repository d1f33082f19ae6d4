"""``selfsup report RUN [RUN ...]``: one HTML page per set of runs, with its figures as PNG files.

For every run: training curves from ``metrics.jsonl`` (loss, learning rate, online kNN, the
collapse monitor, every scalar the method logs), a t-SNE of held-out features for the run and
its random-init baseline, a kNN retrieval grid, the views of the run's own recipe and its crop
sampler's boxes, every evaluation result JSON in the run folder with the pictures written
beside it, the budget (steps, images seen, wall time, images/s, device), the software versions
and the config. With several runs, the summary table has one row per run and the curves are
overlaid. What a run folder lacks is named in a line of the page instead of stopping the report.
The page opens from disk: it references only the PNG files written beside it.
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path

from selfsup.core.environment import software_versions
from selfsup.report.page import page, run_section, summary_table
from selfsup.report.pictures import PictureOptions, RunPictures
from selfsup.report.plots import curves_figure, save
from selfsup.report.run import RunFolder, read_run

RUN_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")

__all__ = ["PictureOptions", "RunFolder", "read_run", "write_report"]


def _prefixes(runs: Sequence[RunFolder]) -> list[str]:
    """File name prefixes, one per run, unique even where runs share a folder name."""
    out: list[str] = []
    for run in runs:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "-", run.name) or "run"
        name, n = base, 1
        while f"{name}_" in out:
            n += 1
            name = f"{base}-{n}"
        out.append(f"{name}_")
    return out


def write_report(paths: Sequence[str | Path], out: str | Path, opts: PictureOptions | None = None,
                 pictures: bool = True) -> Path:
    """Write ``out/report.html`` and its PNG figures for the run folders ``paths``; return the page.
    ``pictures=False`` leaves out the figures that need the networks (t-SNE, retrieval, views)."""
    opts = opts or PictureOptions()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [read_run(p) for p in paths]
    prefixes = _prefixes(runs)
    for run, prefix in zip(runs, prefixes, strict=True):
        run.name = prefix[:-1]
    colours = [RUN_COLOURS[i % len(RUN_COLOURS)] for i in range(len(runs))]
    body = [f"<h1>selfsup report: {', '.join(r.name for r in runs)}</h1>",
            f'<p class="meta">{time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}; '
            + ", ".join(f'<a href="#run-{r.name}">{r.name}</a>' for r in runs) + "</p>",
            "<h2>Summary</h2>", summary_table(runs, colours)]
    if any(r.steps or r.epochs for r in runs):
        save(curves_figure(runs, colours), out / "curves.png")
        body += ["<h2>Training curves</h2>", '<figure><img src="curves.png" alt="training curves"><figcaption>'
                 "Every scalar logged per step (thin: raw, thick: moving average), online kNN per epoch"
                 + (", runs overlaid in their colours" if len(runs) > 1 else "") + "</figcaption></figure>"]
    for run, prefix in zip(runs, prefixes, strict=True):
        missing, drawn = list(run.missing), []
        if pictures and run.has_checkpoint:
            drawn, failed = RunPictures(run, out, prefix, opts).all()
            missing += failed
        copied: dict[str, list[str]] = {}
        for stem, files in run.pictures.items():
            copied[stem] = []
            for file in files:
                shutil.copyfile(file, out / f"{prefix}{file.name}")
                copied[stem].append(f"{prefix}{file.name}")
        body.append(run_section(run, drawn, copied, missing))
    versions = software_versions()
    footer = "made by " + ", ".join(f"{k} {v}" for k, v in versions.items())
    path = out / "report.html"
    path.write_text(page(f"selfsup report: {', '.join(r.name for r in runs)}", body, footer))
    return path
