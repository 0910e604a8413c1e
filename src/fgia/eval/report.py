"""OSFGIR report: the paper-shaped tables as data, rendered to the console (rich), Markdown, JSON and HTML.

Tables (numbering follows the paper):
- Table 5: mAP of each retrieval pipeline and baseline, per meta-category and over all queries.
- Table 7: every method on one split and backbone (baselines, pipelines, query expansion): input size, dim,
  mAP, R@1 and ms per query; each row also records backbone, weights, epochs, head, trainable part and split
  seed (JSON).
- Table 4: coarse classifier accuracy against PCA dimension of the coarse feature.
- Table 6: per-stage query time in ms (mean, p50, p90).
- The recipe validation chose: every choice tried and its mAP on held-out auxiliary species.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table as RichTable

from fgia.data.images import load_image
from fgia.runtime import atomic_write_text


@dataclass
class Hit:
    """One retrieved database image as shown in the HTML report."""

    path: str
    distance: float
    correct: bool | None  # None: the query or the database is unlabelled


@dataclass
class QueryExample:
    """A query and its top hits (Figure 7 of the paper)."""

    path: str
    label: str | None
    category: str
    predicted_category: str
    hits: list[Hit]


@dataclass
class OsfgirReport:
    """Everything one OSFGIR run measured, plus what it ran with (config, seed, split sizes, versions).

    rows:       one per pipeline or baseline: method (machine name), label, backbone, weights, input size, epochs,
                head, trainable part, split seed, dim, mAP, R@1, per_category {meta-category: mAP}, ms per query
                (single-query latency, every stage included).
    classifier: PCA dimension (as text; "full" for no PCA) -> coarse classifier accuracy on the queries.
    timings_ms: stage -> {"mean", "p50", "p90"} over single-query searches.
    selection:  the validation report of `fgia.retrieval.system.select_recipe` (None without selection).
    seconds:    wall time per phase (trunk cache, selection, training, indexing ...).
    """

    config: dict[str, Any]
    seed: int
    split: dict[str, Any]
    versions: dict[str, str]
    rows: list[dict[str, Any]]
    classifier: dict[str, float]
    timings_ms: dict[str, dict[str, float]]
    examples: list[QueryExample] = field(default_factory=list)
    selection: dict[str, Any] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0

    def row(self, method: str) -> dict[str, Any]:
        """The row of `method` (e.g. "c2f+qe", "gap-offtheshelf")."""
        for row in self.rows:
            if row["method"] == method:
                return row
        raise KeyError(f"no row {method!r}; rows: {[r['method'] for r in self.rows]}")

    def to_json(self) -> str:
        """The whole report as JSON text."""
        return json.dumps(asdict(self), indent=2)


Grid = tuple[str, list[str], list[list[str]]]  # title, header, rows


def tables(report: OsfgirReport) -> list[Grid]:
    """The report's tables as plain text grids, shared by every renderer."""
    columns = sorted({c for row in report.rows for c in row["per_category"]})
    map_rows = [[r["label"]] + [_num(r["per_category"].get(c)) for c in columns] + [_num(r["mAP"])]
                for r in report.rows]
    method_columns = ["method", "input size", "dim", "mAP", "R@1", "ms/query", "epochs", "head", "trainable"]
    method_rows = [[r["method"], str(r["input_size"]), str(r["dim"]), _num(r["mAP"]), _num(r["R@1"]),
                    _num(r["ms_per_query"], 1), str(r["epochs"]), r["head"], r["trainable"]] for r in report.rows]
    grids: list[Grid] = [
        ("Table 5: retrieval mAP per meta-category", ["pipeline", *columns, "all"], map_rows),
        ("Table 7: methods on one split and backbone (ms/query: pipelines = single-query p50 with every stage; "
         "single-stage baselines = extraction per image + exact search)", method_columns, method_rows),
        (
            "Table 4: coarse classifier accuracy vs PCA dimension",
            ["dimension", "accuracy"],
            [[d, _num(a)] for d, a in report.classifier.items()],
        ),
        (
            "Table 6: time per query (ms)",
            ["stage", "mean", "p50", "p90"],
            [[s] + [_num(t.get(q), 2) for q in ("mean", "p50", "p90")] for s, t in report.timings_ms.items()],
        ),
    ]
    needs_labels = [[what, why] for what, why, missing in (
        ("mAP and R@1 (Tables 5 and 7)", "labelled queries and database images (the same species = relevant)",
         all(r["mAP"] is None for r in report.rows)),
        ("coarse classifier accuracy (Table 4)", "the queries' meta-categories", not report.classifier),
    ) if missing]
    if needs_labels:
        grids.append(("Metrics left empty: they need labels this database does not have", ["metric", "needs"],
                      needs_labels))
    if report.selection and "skipped" in report.selection:
        grids.append(("Recipe selection", ["skipped"], [[report.selection["skipped"]]]))
    elif report.selection:
        sel = report.selection
        title = (f"Recipe chosen on held-out auxiliary species ({sel['validation_species']} species, "
                 f"{sel['validation_images']} images; models trained on the other {sel['fit_species']})")
        steps = [[step["choice"], _num(step["val_mAP"]), "kept" if step["kept"] else "-"] for step in sel["steps"]]
        steps.insert(1, ["the chosen model's image feature as the search extracts it", _num(sel["base_val_mAP"]), ""])
        curves = [[f"head {head}, epoch {i + 1}", _num(v), ""] for head, curve in sel["heads"].items()
                  for i, v in enumerate(curve)]
        grids.append((title, ["choice", "validation mAP", ""], curves + steps))
    return grids


def print_report(report: OsfgirReport, console: Console | None = None) -> None:
    """Print the tables with rich."""
    console = console or Console()
    for title, header, rows in tables(report):
        table = RichTable(title=title)
        for i, h in enumerate(header):
            table.add_column(h, justify="left" if i == 0 else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)
    console.print(f"split: {report.split}  seed: {report.seed}  elapsed: {report.elapsed_s:.1f} s")


def to_markdown(report: OsfgirReport) -> str:
    """The tables, split, seed, versions and config as a Markdown document."""
    parts = ["# OSFGIR report", ""]
    for title, header, rows in tables(report):
        parts += [f"## {title}", "", _md_row(header), _md_row(["---"] * len(header))]
        parts += [_md_row(r) for r in rows] + [""]
    parts += ["## Run", "", f"- seed: {report.seed}", f"- elapsed: {report.elapsed_s:.1f} s"]
    parts += [f"- seconds {k}: {v:.1f}" for k, v in report.seconds.items()]
    parts += [f"- split {k}: {v}" for k, v in report.split.items()]
    parts += [f"- {k} {v}" for k, v in report.versions.items()]
    parts += ["", "## Config", "", "```json", json.dumps(report.config, indent=2), "```", ""]
    return "\n".join(parts)


def to_html(report: OsfgirReport, thumb: int = 96) -> str:
    """A self-contained page: the tables and the example queries with their hits (green right, red wrong, grey
    unknown: an unlabelled query or database).

    Images are embedded as base64 JPEG thumbnails so the page opens offline and keeps working when the
    data folder moves.
    """
    body = ["<h1>OSFGIR report</h1>"]
    for title, header, rows in tables(report):
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        cells = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows)
        body.append(f"<h2>{html.escape(title)}</h2><table><tr>{head}</tr>{cells}</table>")
    body.append("<h2>Example queries</h2>")
    for ex in report.examples:
        hits = "".join(
            f'<figure class="{_verdict(h.correct)}">{_img(h.path, thumb)}'
            f"<figcaption>{h.distance:.3f}</figcaption></figure>"
            for h in ex.hits
        )
        caption = f"{ex.label or 'unlabelled'} ({ex.category or '?'}; routed to {ex.predicted_category})"
        body.append(
            f'<div class="query"><figure class="q">{_img(ex.path, thumb)}'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>{hits}</div>"
        )
    style = (
        "body{font-family:sans-serif;margin:1em}table{border-collapse:collapse;margin-bottom:1em}"
        "td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}td:first-child{text-align:left}"
        ".query{display:flex;flex-wrap:wrap;gap:4px;margin:8px 0}figure{margin:0;text-align:center;"
        "font-size:11px}img{display:block}.q img{border:4px solid #333}.right img{border:4px solid #2a2}"
        ".wrong img{border:4px solid #d22}.unknown img{border:4px solid #bbb}"
    )
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>fgia OSFGIR report</title>'
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>"
    )


def write_report(report: OsfgirReport, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write report.md, report.json and report.html into `out_dir` (atomically); return their paths."""
    out = Path(out_dir)
    paths = {"markdown": out / "report.md", "json": out / "report.json", "html": out / "report.html"}
    atomic_write_text(paths["markdown"], to_markdown(report))
    atomic_write_text(paths["json"], report.to_json())
    atomic_write_text(paths["html"], to_html(report))
    return paths


def _verdict(correct: bool | None) -> str:
    return "unknown" if correct is None else "right" if correct else "wrong"


def _img(path: str, size: int) -> str:
    im = load_image(path)
    im.thumbnail((size, size))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=80)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="data:image/jpeg;base64,{data}" alt="{html.escape(Path(path).name)}">'


def _num(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _md_row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"
