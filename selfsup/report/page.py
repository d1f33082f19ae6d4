"""The report's HTML: one page, figures as PNG files beside it, every number tagged with the file
and key it was read from (``data-file``, ``data-key``, ``data-value``) so that it can be checked;
``data-file="budget"`` marks :meth:`RunFolder.budget`'s values (from metrics.jsonl, config.yaml
and environment.json)."""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import Any

import yaml

from selfsup.report.pictures import Picture
from selfsup.report.run import HEADLINE, RunFolder, lookup

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0 auto; max-width: 1240px;
       padding: 16px 28px 48px; color: #1d2430; background: #fbfbfd; }
h1 { font-size: 26px; margin-bottom: 2px; } h2 { margin-top: 34px; border-bottom: 2px solid #d9dde5;
padding-bottom: 4px; } h3 { margin: 22px 0 8px; color: #34405a; } h4 { margin: 12px 0 6px; font-family: monospace; }
.meta { color: #667; margin-top: 0; } .missing { background: #fff4e0; border-left: 4px solid #f0a020;
padding: 6px 10px; margin: 6px 0; font-size: 14px; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0; background: white; }
th, td { border: 1px solid #dde1e8; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #eef1f6; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 10px 0 18px; } figure img { max-width: 100%; border: 1px solid #dde1e8; background: white; }
figcaption { font-size: 13px; color: #556; margin-top: 4px; }
.result { display: flex; gap: 18px; flex-wrap: wrap; align-items: flex-start; margin-bottom: 14px; }
.result table { max-width: 520px; } .result figure { margin: 0; flex: 0 1 auto; max-width: 100%; }
details { margin: 8px 0; } pre { background: #f2f4f8; padding: 8px; font-size: 12px; overflow-x: auto; }
.swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 6px; }
"""
LIST_SHOWN = 12  # longer lists are shown by their length only


def number_text(value: float | int) -> str:
    """How a number is written: integers as they are, floats to 4 significant digits."""
    if isinstance(value, int) or not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def _num(value: Any, run: RunFolder, file: str, key: str) -> str:
    """A table cell: a number tagged with where it was read from, or text."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (f'<td class="num" data-run="{html.escape(run.name)}" data-file="{html.escape(file)}" '
                f'data-key="{html.escape(key)}" data-value="{value!r}">{number_text(value)}</td>')
    if value is None:
        return "<td>—</td>"
    return f"<td>{html.escape(str(value))}</td>"


def flatten(record: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """Nested dicts and short lists as (dotted key path, leaf value) pairs in file order."""
    if isinstance(record, dict):
        return [pair for k, v in record.items() for pair in flatten(v, f"{prefix}{k}.")]
    if isinstance(record, list) and len(record) <= LIST_SHOWN:
        return [pair for i, v in enumerate(record) for pair in flatten(v, f"{prefix}{i}.")]
    if isinstance(record, list):
        return [(prefix[:-1], f"(a list of {len(record)})")]
    return [(prefix[:-1], record)]


def _table(rows: Sequence[tuple[str, Any]], run: RunFolder, file: str, labels: dict[str, str] | None = None) -> str:
    """Key / value rows; ``labels``: what to show instead of a key."""
    labels = labels or {}
    body = "".join(f"<tr><th>{html.escape(labels.get(k, k))}</th>{_num(v, run, file, k)}</tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _figure(picture: Picture) -> str:
    return (f'<figure><img src="{html.escape(picture.file)}" alt="{html.escape(picture.title)}">'
            f"<figcaption><b>{html.escape(picture.title)}.</b> {html.escape(picture.caption)}</figcaption></figure>")


BUDGET = (("epochs", "epochs"), ("steps", "optimiser steps"), ("images_seen", "images seen (steps x batch)"),
          ("wall_time_s", "training wall time (s)"), ("images_per_s", "images/s"), ("device", "device"),
          ("device_name", "device name"), ("world_size", "processes"))


def summary_table(runs: Sequence[RunFolder], colours: Sequence[str]) -> str:
    """One row per run: method, budget and the headline results any of the runs has."""
    columns = [(file, key, label) for (file, key), label in HEADLINE
               .items() if any(lookup(r.results.get(file, {}), key) is not None for r in runs)]
    head = ("<tr><th>run</th><th>method</th><th>backbone</th><th>steps</th><th>images seen</th><th>wall time (s)"
            "</th><th>images/s</th><th>last online kNN</th>"
            + "".join(f"<th>{html.escape(label)}</th>" for _, _, label in columns) + "</tr>")
    rows = []
    for run, colour in zip(runs, colours, strict=True):
        budget = run.budget()
        knn = [r["online_knn"] for r in run.epochs if "online_knn" in r]
        cells = [f'<td><span class="swatch" style="background:{colour}"></span>{html.escape(run.name)}</td>',
                 f"<td>{html.escape(run.method)}</td>",
                 f"<td>{html.escape(str(lookup(run.config or {}, 'backbone.name') or '?'))}</td>",
                 *(_num(budget.get(k), run, "budget", k) for k in ("steps", "images_seen", "wall_time_s",
                                                                          "images_per_s")),
                 _num(knn[-1] if knn else None, run, "metrics.jsonl", "online_knn")]
        cells += [_num(lookup(run.results.get(file, {}), key), run, f"{file}.json", key) for file, key, _ in columns]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def run_section(run: RunFolder, pictures: Sequence[Picture], results: dict[str, list[str]],
                missing: Sequence[str]) -> str:
    """A run's part of the page: what is missing, its figures, every result, budget, config, versions.
    ``results``: result stem -> the file names of its pictures beside the report."""
    parts = [f'<h2 id="run-{html.escape(run.name)}">{html.escape(run.name)} '
             f'<small>({html.escape(run.method)}, {html.escape(str(run.path))})</small></h2>']
    if missing:
        parts.append(f'<p class="missing" data-run="{html.escape(run.name)}"><b>Missing:</b> '
                     + "; ".join(html.escape(m) for m in missing) + "</p>")
    if pictures:
        parts.append('<div class="result">' + "".join(_figure(p) for p in pictures) + "</div>")
    if results:
        parts.append("<h3>Evaluation results</h3>")
    for stem, files in results.items():
        shown = "".join(_figure(Picture(f, f"{stem} figure", f"as written by the evaluation ({f})")) for f in files)
        parts.append(f"<h4>{html.escape(stem)}.json</h4><div class='result'>"
                     f"{_table(flatten(run.results[stem]), run, f'{stem}.json')}{shown}</div>")
    budget = run.budget()
    if budget:
        parts.append("<h3>Budget</h3>" + _table([(k, budget[k]) for k, _ in BUDGET if k in budget], run,
                                                "budget", dict(BUDGET)))
    env = run.environment or {}
    if env.get("versions"):
        parts.append("<h3>Software</h3>" + _table(list(env["versions"].items()), run, "environment.json"))
    if run.config is not None:
        parts.append("<h3>Config</h3><details><summary>config.yaml</summary><pre>"
                     + html.escape(yaml.safe_dump(run.config, sort_keys=False)) + "</pre></details>")
    return "\n".join(parts)


def page(title: str, body: Sequence[str], footer: str) -> str:
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>" + "\n".join(body)
            + f'<p class="meta">{html.escape(footer)}</p></body></html>\n')
