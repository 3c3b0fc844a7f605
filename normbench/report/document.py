"""A sweep's report: pandas tables, seaborn plots, `report.md` (renders on GitHub) and `report.html`
(one self-contained file, plots embedded), plus `summary.csv` / `summary.parquet`.

`build_report(paths, out_dir)` reads sweep, run and report directories and pytest-benchmark JSON files
(`normbench.io.results.read`); the sweep callback calls it at the end of every multirun, and
`normbench-report PATH... [--out DIR]` calls it by hand (`normbench.app.cli.report`). Rows from different
inputs are shown side by side, never pooled; `normbench-report --compare A B` (`normbench.report.compare`)
sets two inputs against each other.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

import normbench
from normbench.bench import clocks
from normbench.errors import UsageError
from normbench.io import provenance, results, swept
from normbench.report import claims, speed_tables
from normbench.report.accuracy_tables import (
    accuracy_groups,
    accuracy_stats,
    accuracy_table,
    headline,
    long_errors,
    lr_choices,
    lr_curves,
    paired_table,
    paired_to_baseline,
    reuse_note,
    test_error,
    with_setup,
)
from normbench.report.plots import PASS_ORDER, impl_order, label, norm_order, rank

log = logging.getLogger("normbench")

REPORT_MD, REPORT_HTML = "report.md", "report.html"
PLOTS = {
    "accuracy": "accuracy_vs_batch.png",
    "latency": "speed_latency.png",
    "roofline": "speed_roofline.png",
    "tradeoff": "speed_vs_accuracy.png",
    "claims": "claims_convergence.png",
}
LR_PLOT = "lr_sensitivity.png"  # drawn only where the runs searched their LR (accuracy.lr_search)

# ----------------------------------------------------------------------------------------------- tables


def ok_rows(frame: pd.DataFrame, kind: str) -> pd.DataFrame:
    """The measurements of one kind (`speed` or `accuracy`), failed and missing jobs left out."""
    if frame.empty or "kind" not in frame:
        return frame.iloc[0:0]
    return frame[(frame["kind"] == kind) & (frame["status"] == "ok")].copy()


# A configuration; `input` keeps measurements of different sources apart.
SPEED_KEYS = [
    "input",
    "model",
    "norm",
    "pass",
    "batch_size",
    "shape",
    "dtype",
    "layout",
    "groups",
    "cuda_graph",
    "device",
    "device_name",
]


def speed_stats(speed: pd.DataFrame) -> pd.DataFrame:
    """Per configuration and implementation: median ms, GB/s, % of roofline and the speedup over
    `native` (native's median / this median; > 1 is faster than native) for the same configuration."""
    keys = [k for k in SPEED_KEYS if k in speed and speed[k].notna().any()]
    metrics = [m for m in ("median_ms", "wall_ms", "host_us", "gbps", "pct_of_peak", "layers") if m in speed]
    d, extra = swept.add(speed.copy(), keys + ["impl"])  # a key the sweep varies that these do not show
    keys += extra
    for k in keys:
        if k != "batch_size":
            d[k] = d[k].map(label)
    stats = d.groupby(keys + ["impl"], dropna=False)[metrics].median().reset_index()
    native = stats[stats["impl"] == "native"].set_index(keys)["median_ms"]
    base = stats.set_index(keys).index.map(lambda k: native.get(k, np.nan))
    stats["speedup_vs_native"] = np.asarray(base, dtype=float) / stats["median_ms"].to_numpy(dtype=float)
    order = {"norm": norm_order(), "impl": impl_order(), "pass": PASS_ORDER}
    sort = [k for k in ("norm", "pass", "dtype", "layout", "batch_size", "shape", *extra, "impl") if k in stats]
    stats = stats.sort_values(sort, key=lambda s: rank(s, order[s.name]) if s.name in order else s)
    stats = stats.reset_index(drop=True)
    stats.attrs["swept"] = extra  # the tables show these beside their own keys
    return stats


def _sig(x: float, digits: int = 4) -> str:
    return "" if pd.isna(x) else f"{x:.{digits}g}"


def speed_table(stats: pd.DataFrame) -> pd.DataFrame:
    """The speed table as shown: keys that vary, then formatted metrics."""
    from normbench.report.plots import _varying, shape_features

    probe = stats.replace({"": None})
    if "shape" in probe:
        probe["shape"] = probe["shape"].map(shape_features)  # the shape apart from the batch dimension
    show = ["norm", "impl", "pass", "batch_size"]
    show = _varying(probe, ["input"]) + show
    show += _varying(probe, ["shape", "dtype", "layout", "groups", "cuda_graph", "device_name"], within="norm")
    show += [c for c in stats.attrs.get("swept", []) if c not in show]  # normbench.io.swept
    t = stats[show].copy()
    t["batch_size"] = t["batch_size"].map(lambda b: f"{b:g}" if isinstance(b, (int, float)) else str(b))
    t = t.rename(columns={"batch_size": "batch", "device_name": "device"})
    if "layers" in stats and stats["layers"].notna().any():  # shape=model: the model's layers a row stands for
        t["layers"] = stats["layers"].map(label)
    t["median ms"] = stats["median_ms"].map(_sig)
    if "wall_ms" in stats and (stats["wall_ms"] != stats["median_ms"]).any():  # a GPU: the device clock ranks
        t["wall ms"] = stats["wall_ms"].map(_sig)
    if "host_us" in stats and stats["host_us"].notna().any():
        t["host us"] = stats["host_us"].map(lambda v: "" if pd.isna(v) else f"{v:.0f}")
        t["bound"] = [clocks.bound(h, m) for h, m in zip(stats["host_us"], stats["median_ms"])]
    if "gbps" in stats:
        t["GB/s"] = stats["gbps"].map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
    if "pct_of_peak" in stats:
        t["% of roofline"] = stats["pct_of_peak"].map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
    t["speedup vs native"] = stats["speedup_vs_native"].map(lambda v: "" if pd.isna(v) else f"{v:.2f}x")
    return t


def benchmarks_table(bench: pd.DataFrame) -> pd.DataFrame:
    """pytest-benchmark entries that are not one norm's pass: one row each, under its own name."""

    def col(name: str, missing: Any = np.nan) -> pd.Series:  # a field no entry of the file had is no column
        return bench[name] if name in bench else pd.Series(missing, index=bench.index, dtype=object)

    t = pd.DataFrame(
        {
            "input": bench["input"],
            "group": col("group", "").fillna(""),
            "benchmark": col("benchmark"),
            "median ms": bench["median_ms"].map(_sig),
            "q1-q3 ms": [f"{_sig(a)}-{_sig(b)}" for a, b in zip(col("q1_ms"), col("q3_ms"))],
            "rounds": col("rounds").map(lambda v: "" if pd.isna(v) else f"{v:g}"),
        }
    )
    return t.drop(columns=[] if t["input"].nunique() > 1 else ["input"]).reset_index(drop=True)


def source_labels(frame: pd.DataFrame) -> dict[str, str]:
    """input path -> a short label: its name where that is unique among the inputs, else the path."""
    inputs = [str(i) for i in pd.unique(frame["input"].dropna())] if "input" in frame else []
    names = [Path(i).stem if Path(i).suffix == ".json" else Path(i).name for i in inputs]
    return {i: (n if names.count(n) == 1 else i) for i, n in zip(inputs, names)}


def failures_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Jobs that left no measurement: failed (with their error line), missing, unreadable or empty."""
    if frame.empty:
        return frame
    # a job is its directory; jobs that never started have none, only their overrides
    jobs = frame.assign(input=frame["input"].fillna("").astype(str)).drop_duplicates(
        ["input", "sweep", "job", "overrides"]
    )
    # the overrides every job of its sweep shares (e.g. dataset=...) say nothing about the failure
    common = {
        key: set.intersection(*(set(str(o).split()) for o in g["overrides"].fillna("")))
        for key, g in jobs.groupby(["input", "sweep"], dropna=False)
    }
    bad = jobs[jobs["status"] != "ok"].copy()
    if len(jobs) > 1:
        bad["overrides"] = [
            " ".join(o for o in str(ov or "").split() if o not in common[(i, s)])
            for i, s, ov in zip(bad["input"], bad["sweep"], bad["overrides"])
        ]
    cols = ["sweep", "job", "status", "overrides", "error"]
    return bad[cols].reset_index(drop=True)


# -------------------------------------------------------------------------------------------- documents


# Markdown punctuation that would turn a table cell's text into markup (or split its row); an
# underscore only at a word's edge, as CommonMark reads `evonorm_b0` as plain text already, and no
# bracket: without a link definition, `test_bn[native]` is plain text too.
_MARKUP = re.compile(r"([\\`*|<])|(?<!\w)_|_(?!\w)")


def literal(text: str) -> str:
    """`text` escaped for Markdown: shown as written, never read as emphasis, code, HTML or a column."""
    return _MARKUP.sub(lambda m: "\\" + m.group(0), text)


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


@dataclass
class Document:
    """Blocks written as Markdown (`report.md`, images linked by relative path); `html` renders that same
    Markdown with markdown-it-py (CommonMark plus tables) into one page, images embedded."""

    out_dir: Path
    blocks: list[str] = field(default_factory=list)

    def heading(self, level: int, text: str) -> None:
        self.blocks.append("#" * level + " " + text)

    def para(self, text: str) -> None:
        self.blocks.append(text)

    def code(self, text: str) -> None:
        fence = "`" * max([3, *(len(run) + 1 for run in re.findall(r"`+", text))])  # longer than any run inside
        self.blocks.append(f"{fence}\n{text}\n{fence}")

    def bullets(self, items: list[str]) -> None:
        self.blocks.append("\n".join(f"- {item}" for item in items))

    def table(self, frame: pd.DataFrame) -> None:
        """Cells are data (error lines, paths, names), shown as written."""
        shown = frame.rename(columns=lambda c: literal(str(c))).map(lambda v: "" if _missing(v) else literal(str(v)))
        self.blocks.append(shown.to_markdown(index=False, disable_numparse=True))

    def image(self, path: Path, alt: str) -> None:
        self.blocks.append(f"![{literal(alt)}]({path.relative_to(self.out_dir).as_posix()})")

    def markdown(self) -> str:
        return "\n\n".join(self.blocks) + "\n"

    def html(self, title: str) -> str:
        from markdown_it import MarkdownIt

        md = MarkdownIt("commonmark", {"html": False}).enable("table")

        def image(renderer, tokens, idx, options, env) -> str:  # markdown-it binds it to its renderer
            return self._embedded_image(
                tokens[idx], renderer.renderInlineAsText(tokens[idx].children or [], options, env)
            )

        md.add_render_rule("image", image)
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{STYLE}</style></head><body>\n" + md.render(self.markdown()) + "</body></html>\n"
        )

    def _embedded_image(self, token, alt: str) -> str:
        """An image as one self-contained file needs it: the PNG inline, its caption under it."""
        name = str(token.attrGet("src"))
        data = base64.b64encode((self.out_dir / name).read_bytes()).decode()
        return (
            f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" data-file="{html.escape(name)}">'
            f'<br><span class="caption">{html.escape(alt)}</span>'
        )


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:14px}"
    "th,td{border:1px solid #ccc;padding:3px 8px;text-align:right!important}"
    "th{background:#f3f3f3}pre{background:#f6f6f6;padding:.6em;overflow-x:auto}"
    "img{max-width:100%}.caption{color:#666;font-size:13px}"
)


def _unique(frame: pd.DataFrame, col: str) -> str:
    if col not in frame:
        return ""
    return ", ".join(str(v) for v in pd.unique(frame[col].dropna()))


# The checkout normbench runs from; report text names paths relative to it (a report is committed and
# read on other machines, where this machine's directories mean nothing).
REPO = Path(normbench.__file__).resolve().parent.parent
ABSOLUTE = re.compile(r"(?<![\w.~/-])/[^\s'\"`,;:)]+")


def shown_paths(text: str) -> str:
    """A recorded command with each absolute path inside the repo made relative to it, and each one outside
    it cut to `.../` and its last part (a data file, where the sweep was written), so a report names only
    paths inside the repo or the sweep (its inputs, as given)."""

    def shown(match: re.Match[str]) -> str:
        path = Path(match.group(0))
        if path.is_relative_to(REPO):
            return path.relative_to(REPO).as_posix() or "."
        return f".../{path.name}" if path.name else match.group(0)

    return ABSOLUTE.sub(shown, text)


def _what_ran(doc: Document, frame: pd.DataFrame, inputs: list[Path]) -> None:
    doc.heading(2, "What ran")
    # The inputs the rows name (a report directory given as input passes on those of its rows).
    named = [str(i) for i in pd.unique(frame["input"].dropna())] if "input" in frame else []
    for path in [Path(i) for i in dict.fromkeys(named + [str(p) for p in inputs])]:
        info = provenance.read_run_info(path)
        rows = frame[frame["input"] == str(path)] if not frame.empty else frame
        counts = rows.drop_duplicates(["sweep", "job", "overrides"])["status"].value_counts() if not rows.empty else {}
        jobs = ", ".join(f"{n} {status}" for status, n in counts.items()) or "no jobs found"
        kinds = _unique(rows[rows["status"] == "ok"], "kind") if not rows.empty else ""
        doc.heading(3, f"`{info['name']}`" + (f" ({kinds})" if kinds else ""))
        if info.get("command"):
            doc.code(shown_paths(info["command"]))
        vers = dict(info.get("versions") or {})
        for col, name in (("torch_version", "torch"), ("torch", "torch"), ("triton_version", "triton")):
            if _unique(rows, col):
                vers[name] = _unique(rows, col)
        items = [
            f"input: `{path}`",
            f"jobs: {jobs}",
            f"date: {info.get('date') or 'not recorded'}",
            f"git commit: `{info.get('git_commit') or 'not recorded'}`",
            f"device: {_unique(rows, 'device_name') or _unique(rows, 'device') or 'not recorded'}"
            + (f" (host {info['host']})" if info.get("host") else ""),
            "versions: " + (", ".join(f"{k} {v}" for k, v in vers.items() if v) or "not recorded"),
        ]
        doc.bullets(items)


def _accuracy_section(
    doc: Document,
    acc: pd.DataFrame,
    plot: Path | None,
    paired: pd.DataFrame | None,
    curves: pd.DataFrame,
    lr_plot: Path | None,
) -> None:
    doc.heading(2, "Accuracy: test error vs the normalization batch K")
    runs = with_setup(acc)
    groups = accuracy_groups(runs)
    parts = list(runs.groupby(groups, dropna=False)) if groups else [((), runs)]
    for key, g in parts:  # the effect first, in a sentence per setup
        prefix = ", ".join(f"{c} = {v}" for c, v in zip(groups, key if isinstance(key, tuple) else (key,)))
        doc.para((f"{prefix}: " if prefix else "") + headline(g))
    note = reuse_note(acc)
    if note:
        doc.para(note)
    doc.para(
        "Test error (%) = 100 - test accuracy, mean ± sd over seeds (one value where one seed ran). K is the "
        "number of samples one normalization batch holds (the GN paper's images per GPU); W = global batch / K "
        "simulated workers. Columns: each norm in eval mode (BatchNorm on its running EMA); for BatchNorm also "
        "**PreciseBN** (population statistics recomputed after training, Wu & Johnson 2021 Sec. 3.1) and "
        "**batch stats** (the test set normalized K samples at a time, as in training). **best** is the lowest "
        "mean error. See docs/accuracy.md."
    )
    stats = accuracy_stats(acc)
    for key, g in stats.groupby(groups, dropna=False) if groups else [((), stats)]:
        if groups:
            values = key if isinstance(key, tuple) else (key,)
            doc.heading(3, ", ".join(f"{c} = {v}" for c, v in zip(groups, values)))
        doc.table(accuracy_table(g))
    if paired is not None and not paired.empty:
        _paired_section(doc, paired, groups)
    if plot:
        doc.image(plot, "Test error vs K per norm (BatchNorm: three evaluations); the GN paper's protocol beside")
    if not curves.empty:
        doc.heading(3, "Learning rate per configuration")
        doc.para(
            "accuracy.lr_search: each LR of the grid trained the configuration on 80% of the training split (one "
            "seed) and was scored on the held-out rest, never on the test set; the reported runs trained at the "
            "LR with the lowest validation error (column `lr_chosen`, per lr_reference.batch samples, scaled "
            "linearly like the fixed LR; `lr` is the LR used). A choice at the edge of the grid is marked."
        )
        doc.table(lr_choices(curves))
        if lr_plot:
            doc.image(lr_plot, "Validation error vs LR per norm, the chosen LR circled")


def _paired_section(doc: Document, paired: pd.DataFrame, groups: list[str]) -> None:
    """Each norm against BatchNorm at the same K, paired by seed, with the 95% interval."""
    n = int(paired["n"].min())
    doc.para(
        "Paired difference to BatchNorm (eval mode, running EMA) at the same K: the mean over seeds of each "
        f"seed's test error minus BatchNorm's with that seed (pp), and its 95% confidence interval over {n} "
        "seeds (t interval, widened to the BCa bootstrap's where the differences are skewed; "
        "normbench/report/stats.py). "
        "An interval that excludes 0 is a difference the seeds support; its width is what these seeds can resolve."
    )
    for key, g in paired.groupby(groups, dropna=False) if groups else [((), paired)]:
        if groups:
            values = key if isinstance(key, tuple) else (key,)
            doc.heading(4, "paired: " + ", ".join(f"{c} = {v}" for c, v in zip(groups, values)))
        doc.table(paired_table(g))


def pooled_accuracy_keys(acc: pd.DataFrame) -> list[str]:
    """The keys the sweep varied that the accuracy tables keep apart only as extra columns
    (normbench.io.swept): what any comparison by norm, K and setup alone would pool."""
    from normbench.report.accuracy_tables import GROUP_COLUMNS, RUN_KEYS

    return swept.add(with_setup(acc), [*GROUP_COLUMNS, *RUN_KEYS])[1]


def _claims_plot(acc: pd.DataFrame, path: Path) -> Path | None:
    from normbench.report import plots

    c5 = claims.convergence(acc)
    if c5 is None:
        return None
    _, level, curves, per_epoch = c5
    intervals = []
    for cid, _, comps, _ in claims.comparisons(acc):
        for comp in comps:
            verdict, ci = comp.judged()
            if ci is not None and comp.unit in ("%", " pp"):  # C5's steps and C6's ratio are in other units
                intervals.append((f"{cid} {comp.name}", ci.estimate, ci.low, ci.high, verdict))
    return plots.convergence_curves(curves, per_epoch, level, path, intervals, claims.MARGIN)


def _claims_section(doc: Document, acc: pd.DataFrame, plot: Path | None) -> None:
    table = claims.judge(acc)
    doc.heading(2, "The notebook's claims")
    doc.para(
        "The seed notebook (../shared/seed/) states six lessons about BatchNorm as facts; each is tested here by "
        "comparisons that change one variable (docs/claims.md). Values are mean ± sd over "
        f"{table.attrs.get('seeds', '?')} seeds; A - B is the mean of the per-seed differences (the two sides "
        "matched by seed: same initial weights and data order) with its 95% confidence interval (t interval; "
        "widened to the BCa bootstrap's where the differences are skewed). A claim is **supported** when the "
        "interval excludes 0 in the claimed direction, **not supported** when it excludes 0 against it, "
        f"**equal** when TOST puts the difference within ±{claims.MARGIN:g} pp (the 90% interval inside the "
        "margin; Schuirmann 1987), and **inconclusive** otherwise; a claim of equality (C2) is supported when "
        "TOST says equal. A claim made of several comparisons is **mixed** when they disagree."
    )
    doc.table(table)
    if plot:
        doc.image(plot, "C5: train loss vs optimizer step, BatchNorm vs no norm, with the level judged at")


def _speed_headline(doc: Document, speed: pd.DataFrame, steps: pd.DataFrame) -> None:
    """The speed report opens here: the best implementation per norm and pass, then each model's step."""
    doc.heading(2, "Headline")
    if not speed.empty:
        doc.para(
            "Per norm and pass, at the largest input measured: the fastest implementation, its % of roofline "
            "and its speedup over `native` at that same input (above 1x: faster). Every configuration is in the "
            "Speed table below."
        )
        doc.table(speed_tables.headline_table(speed_stats(speed)))
    if not steps.empty:
        doc.heading(3, "A model's training step")
        doc.para(
            "Forward + backward of the whole model (no optimizer step) with each norm and implementation in "
            "place of its norm layers, same weights and input. **norm layers ms**: the sum over its norm layers "
            "of each one's fwdbwd time, timed alone (an estimate: in the step, caches and overlap differ); "
            "**norm share**: that over the step. Speedup vs native: the same norm's native step / this one; "
            "vs bn native: what switching from torch's BatchNorm buys (below 1x: costs)."
        )
        doc.table(speed_tables.step_table(speed_tables.step_stats(steps)))


def build_report(
    paths: list[str | Path], out_dir: str | Path, *, title: str | None = None, notes: list[str] | None = None
) -> Path:
    """Read `paths`, write the summary, plots, `report.md` and `report.html` into `out_dir`; return
    the path of `report.md`. `notes` are shown first (e.g. that the sweep stopped early)."""
    from normbench.report import plots

    inputs = [Path(p) for p in paths]
    out = Path(out_dir)
    frame = results.read(inputs)
    check_out(inputs, out, frame)
    keep_data(out, frame, rebuild=out.resolve() in {p.resolve() for p in inputs})
    out.mkdir(parents=True, exist_ok=True)

    labels = source_labels(frame)
    acc, speed = ok_rows(frame, "accuracy"), ok_rows(frame, "speed")
    bench = ok_rows(frame, "benchmark")
    for part in (acc, speed, bench):  # shown by a short name; `input` keeps each source apart
        part["input"] = part["input"].map(lambda i: labels.get(str(i), i))
    # One layer's passes have a roofline; a model's step and the module wrapper are tables of their own.
    speed, steps, wrapper = speed_tables.split(speed)
    if not acc.empty:
        acc["test_error"] = test_error(acc)
    # Speed against accuracy needs one source of each, or it would average sources together.
    one_each = speed["input"].nunique() == 1 and acc["input"].nunique() == 1
    paired = paired_to_baseline(acc) if not acc.empty else None
    pooled = pooled_accuracy_keys(acc) if claims.available(acc) else []
    made: dict[str, Path | None] = {
        "accuracy": plots.accuracy_vs_batch(long_errors(with_setup(acc)), out / PLOTS["accuracy"], paired=paired)
        if not acc.empty
        else None,
        "latency": plots.speed_latency(speed, out / PLOTS["latency"]) if not speed.empty else None,
        "roofline": plots.speed_roofline(speed, out / PLOTS["roofline"]) if not speed.empty else None,
        "tradeoff": plots.speed_vs_accuracy(speed, acc, out / PLOTS["tradeoff"]) if one_each else None,
        "claims": _claims_plot(acc, out / PLOTS["claims"]) if claims.available(acc) and not pooled else None,
    }
    for key, name in PLOTS.items():  # a plot an earlier build drew, which this data no longer has
        if made[key] is None:
            (out / name).unlink(missing_ok=True)
    curves = lr_curves(acc) if not acc.empty else None  # the LR table's and its plot's, computed once
    lr_plot = plots.lr_sensitivity(curves, out / LR_PLOT) if curves is not None else None
    if lr_plot is None:
        (out / LR_PLOT).unlink(missing_ok=True)

    title = title or "normbench report: " + ", ".join(p.stem if p.is_file() else p.name for p in inputs)
    doc = Document(out)
    doc.heading(1, title)
    now = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    doc.para(
        f"Built {now} by normbench {provenance.versions().get('normbench') or '?'} "
        f"(commit `{provenance.git_commit() or 'unknown'}`). Every measurement: `{results.SUMMARY_CSV}` "
        f"(also `{results.SUMMARY_PARQUET}`); rebuild with `normbench-report " + " ".join(str(p) for p in inputs) + "`."
    )
    for note in notes or []:
        doc.para(f"**Note:** {note}")
    if not speed.empty or not steps.empty:
        _speed_headline(doc, speed, steps)
    _what_ran(doc, frame, inputs)

    if not acc.empty:
        _accuracy_section(doc, acc, made["accuracy"], paired, curves, lr_plot)
    if claims.available(acc):
        if pooled:
            doc.heading(2, "The notebook's claims")
            doc.para(
                f"Not judged: this sweep varies {', '.join(f'`{k}`' for k in pooled)}, which the claims' "
                "comparisons do not tell apart, so each would pool different configurations. Judge them on a "
                "sweep that holds those keys fixed (docs/claims.md)."
            )
        else:
            _claims_section(doc, acc, made["claims"])

    if not speed.empty:
        doc.heading(2, "Speed")
        doc.para(
            "Median latency of each pass on the device clock (`device_ms`; on a CPU, and in rows older than "
            "the clocks, the wall clock); wall ms = what an eager loop sees, host us = the host's cost to "
            "issue a call, bound = host where that exceeds the device time (docs/speed.md). GB/s = the bytes "
            "a pass must move / median time; % of roofline = "
            "GB/s / the device's measured copy bandwidth (`peak_gbps`): normalization is memory-bound, so "
            "100% is the hardware limit. Speedup = `native`'s median / this median (above 1x: faster than "
            "native)."
        )
        stats = speed_stats(speed)
        over = int((stats["pct_of_peak"] > 100).sum()) if "pct_of_peak" in stats else 0
        if over:
            doc.para(
                f"{over} row(s) exceed 100% of roofline: an input small enough to stay in cache moves faster "
                "than the memory copy that set the peak, or the peak was measured while the machine was busy."
            )
        doc.table(speed_table(stats))
        for key, alt in (("latency", "Median latency vs batch size"), ("roofline", "% of roofline vs batch size")):
            if made[key]:
                doc.image(made[key], alt)
    if not wrapper.empty:
        doc.heading(3, "normbench's module wrapper, on its own")
        doc.para(
            "No row above includes it: a pass times the implementation's call on input checked once before "
            "timing, as a torch.nn user pays for F.batch_norm or F.group_norm. This is what normbench's module "
            "adds to every call (input checks, registry dispatch, BatchNorm's call count), timed on the host "
            "clock with an implementation that computes nothing (docs/speed.md, fair timing)."
        )
        doc.table(speed_tables.wrapper_table(wrapper, speed))

    if not bench.empty:
        doc.heading(2, "Other benchmarks")
        doc.para(
            "pytest-benchmark entries that are not one norm's pass, each under its own name: median and "
            "quartiles of its rounds."
        )
        doc.table(benchmarks_table(bench))

    if made["tradeoff"]:
        doc.heading(2, "Speed vs accuracy")
        doc.para("Per norm: its latency against its test error at the smallest and largest batch per worker.")
        doc.image(made["tradeoff"], "Speed vs accuracy per norm")

    bad = failures_table(frame)
    doc.heading(2, "Failed and unfinished jobs")
    if frame.empty:
        doc.para("No job directories were found: the sweep ended before any job started.")
    elif bad.empty:
        doc.para("None: every job left its measurements.")
    else:
        doc.para(
            f"{len(bad)} job(s) left no measurement (the rest of the sweep ran). `failed`: the job raised "
            "(its traceback is in the job's `failure.json`); `skipped`: the implementation cannot run that "
            "combination (not a failure); `missing`: no result file (interrupted or still running)."
        )
        doc.table(bad)
    if acc.empty and speed.empty and bench.empty and not frame.empty:
        doc.para("No measurements were found in the inputs.")

    # Written last, once the whole document is built: the summary and the report, or neither.
    page = doc.html(title).encode()
    results.write_summary(frame, out)
    results.atomic_write_bytes(out / REPORT_HTML, page)
    return results.atomic_write_bytes(out / REPORT_MD, doc.markdown().encode())


def check_out(inputs: list[Path], out: Path, frame: pd.DataFrame) -> None:
    """Refuse an output directory that holds another sweep's results or another report: a report is
    written into one of its inputs (a rebuild), a new directory, or a report of the same sources as
    `frame`'s (the inputs its rows name)."""
    how = "pick a new --out directory (without --out: a new results/report/<date>)"
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a directory; {how}")
    if not out.is_dir() or out.resolve() in {p.resolve() for p in inputs}:
        return
    if (out / provenance.RUN_FILE).is_file() or (out / "multirun.yaml").is_file() or results.find_jobs(out):
        raise UsageError(f"--out {out} is another sweep's directory: a report never writes over its results; {how}")
    summary, md = out / results.SUMMARY_CSV, out / REPORT_MD
    if not summary.is_file():
        if md.is_file():
            raise UsageError(f"--out {out} holds a report ({REPORT_MD}) of unknown inputs; {how}")
        return
    try:
        had = {Path(str(i)).resolve() for i in results.read_summary(summary)["input"].dropna().unique()}
    except (OSError, ValueError, KeyError) as exc:
        raise UsageError(f"--out {out} holds a {results.SUMMARY_CSV} that cannot be read ({exc}); {how}") from None
    sources = frame["input"].dropna().unique() if "input" in frame else [str(p) for p in inputs]
    if had != {Path(str(i)).resolve() for i in sources}:
        names = ", ".join(sorted(str(p) for p in had)) or "none recorded"
        raise UsageError(f"--out {out} holds the report of other inputs ({names}); {how}")


def keep_data(out: Path, frame: pd.DataFrame, rebuild: bool = False) -> None:
    """Refuse to write a summary that holds fewer measurements than the one already in `out`: a rebuild
    never shrinks a report's data (`rebuild`: `out` is one of the inputs, so the hint is another --out)."""
    old = out / results.SUMMARY_CSV
    if not old.is_file():
        return
    try:
        before = results.read_summary(old)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{old} exists but cannot be read ({exc}): move it away or choose another --out") from None
    had = int((before["status"] == "ok").sum())
    has = int((frame["status"] == "ok").sum()) if "status" in frame else 0
    if has < had:
        hint = "" if rebuild else f"rebuild it from itself with `normbench-report {out}`, or "
        raise UsageError(
            f"{out} holds a report of {had} measurement(s); these inputs give {has}, and rebuilding would lose "
            f"the rest: {hint}write this report elsewhere with --out NEW_DIR"
        )
