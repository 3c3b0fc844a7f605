"""The report's figures (seaborn, PNG), each drawn from a tidy frame of `normbench.io.results` rows.

Norms and implementations are named, ordered and coloured from the registry (`norm_order`,
`norm_label`, `norm_colors`, `impl_order`), so a newly registered norm appears without a change here.
Every norm has one colour in every figure; in the speed figures, where colour means
the implementation, each implementation has one colour too and the norm names the facet row (its title
in the norm's colour). Each function writes one PNG (atomically) and returns its path, or None when the
frame holds nothing to draw.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.ticker import FuncFormatter
from scipy.stats import t as scipy_t

from normbench import norms
from normbench.bench.speed import PASSES
from normbench.errors import UsageError
from normbench.io.results import atomic_write_bytes
from normbench.norms.layers import NoNorm

# Colours handed out in registry order (normbench.norms.available(); the no-op baseline grey): the
# classics in Okabe-Ito, the wider family in Paul Tol's colours apart from them, then spares, so a
# figure holding every registered norm still tells each apart. A norm registered later takes the next.
NORM_PALETTE = ["#0072B2", "#009E73", "#CC79A7", "#D55E00", "#882255", "#117733", "#56B4E9", "#E69F00", "#332288"]
NORM_PALETTE += ["#AA4499", "#66A61E", "#A6761D", "#1F78B4", "#B15928", "#6A3D9A", "#FB9A99", "#B2DF8A"]
BASELINE_COLOR = "#7F7F7F"
IMPL_PALETTE = ["#7570B3", "#E6AB02", "#1B9E77", "#E7298A", "#66A61E", "#A6761D", "#1F78B4", "#B15928"]
PASS_ORDER = list(PASSES)


def norm_order() -> list[str]:
    """The registered norms in registry order, the no-op baseline (`none`) last."""
    return sorted(norms.available(), key=lambda name: norms.norm_class(name) is NoNorm)


def impl_order() -> list[str]:
    """Every registered implementation name, in registry order."""
    return norms.all_implementations()


def norm_label(name: str) -> str:
    """A norm's name in a legend or sentence: its class's `title` (a name the registry lacks: as is)."""
    try:
        return norms.norm_class(name).title
    except UsageError:  # rows of a norm this version no longer registers
        return str(name)


def position(value, order: list[str]) -> tuple[int, str]:
    """A sort key: the value's place in `order`, a value not in it after them all, by name."""
    return (order.index(str(value)) if str(value) in order else len(order), str(value))


def rank(values: pd.Series, order: list[str]) -> pd.Series:
    """`position` of each value: sort keys for DataFrame.sort_values."""
    return values.map(lambda v: position(v, order))


# Wu & He, "Group Normalization", ECCV 2018, Figure 1 (ResNet-50 on ImageNet, validation error %,
# batch size = images per worker); the same numbers are in its Table 2.
GN_PAPER_BATCH = [32, 16, 8, 4, 2]
GN_PAPER_ERROR = {"bn": [23.6, 23.7, 24.8, 27.3, 34.7], "gn": [24.1, 24.2, 24.0, 24.2, 24.1]}


def label(value) -> str:
    """A value as shown in a legend or table: missing -> "", 32.0 -> "32"."""
    if value is None or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _ordered(values, order: list[str]) -> list[str]:
    values = [str(v) for v in pd.unique(pd.Series(list(values)).dropna())]
    return [v for v in order if v in values] + sorted(v for v in values if v not in order)


def _palette(names: list[str], fixed: dict[str, str], colours: list[str]) -> dict[str, str]:
    spare = iter(c for c in colours if c not in fixed.values())
    return {n: fixed.get(n) or next(spare, "#000000") for n in names}


def norm_colors() -> dict[str, str]:
    """Every registered norm's colour: the same one in every figure, as long as the registry holds it."""
    real = [n for n in norm_order() if norms.norm_class(n) is not NoNorm]
    baseline = {n: BASELINE_COLOR for n in norm_order() if n not in real}
    return {**dict(zip(real, NORM_PALETTE)), **baseline}


def impl_colors() -> dict[str, str]:
    """Every registered implementation's colour."""
    return dict(zip(impl_order(), IMPL_PALETTE))


def norm_palette(names) -> dict[str, str]:
    """A colour per norm name, in registry order; a name the registry lacks takes a spare colour."""
    fixed = norm_colors()
    return _palette(_ordered(names, norm_order()), fixed, NORM_PALETTE)


def impl_palette(names) -> dict[str, str]:
    """A colour per implementation name, in registry order; an unknown name takes a spare colour."""
    fixed = impl_colors()
    return _palette(_ordered(names, impl_order()), fixed, IMPL_PALETTE)


def _save(fig, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _log2_axis(ax, values, invert: bool = False) -> None:
    ticks = sorted({int(v) for v in values if pd.notna(v) and v > 0})
    ax.set_xscale("log", base=2)
    if ticks:
        ax.set_xticks(ticks)
        ax.set_xticklabels([str(t) for t in ticks])
        ax.minorticks_off()
        pad = 2**0.35
        lo, hi = ticks[0] / pad, ticks[-1] * pad
        ax.set_xlim((hi, lo) if invert else (lo, hi))


def _plain_log(axis) -> None:
    """Log-axis tick labels as plain numbers (0.5, 2, 30), not powers of ten."""
    fmt = FuncFormatter(lambda v, _: f"{v:g}")
    axis.set_major_formatter(fmt)
    axis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:g}".lstrip("0.")[:1] in "235" else ""))


def _varying(frame: pd.DataFrame, columns: list[str], within: str | None = None) -> list[str]:
    """The columns that take more than one value (within one value of `within`, e.g. within a norm:
    gn's `groups` varies only if two gn rows differ, not because bn has none)."""

    def varies(col: str) -> bool:
        if within and within in frame:
            return bool((frame.groupby(within)[col].nunique(dropna=True) > 1).any())
        return frame[col].nunique(dropna=True) > 1

    return [c for c in columns if c in frame and varies(c)]


# --------------------------------------------------------------------------------------------- accuracy


EVALUATION_STYLE = {  # BatchNorm's three evaluations: one line style each (docs/accuracy.md)
    "running": ("-", "o", ""),
    "PreciseBN": ("--", "s", " PreciseBN"),
    "batch stats": (":", "v", " batch stats at K"),
}


def _protocol_title(data: pd.DataFrame) -> str:
    """What a sweep over K held fixed, in words, from the `setup` column (normbench.report.accuracy_tables)."""
    setup = str(data["setup"].iloc[0]) if "setup" in data and data["setup"].nunique() == 1 else ""
    if setup.endswith("samples per step"):
        g = setup.split()[0]
        one_lr = "lr" not in data or data["lr"].nunique() <= 1
        same = "same steps and LR" if one_lr else "same steps (LR searched per K)"
        return f"fixed {g} samples per step (W = {g}/K workers): {same} for every K"
    if setup.endswith(("worker", "workers")):
        return f"fixed {setup}: global batch = K x W, LR scaled with it (the GN paper's protocol)"
    return ""


def _mean_ci(values: pd.Series) -> tuple[float, float]:
    """Mean and the half-width of its 95% t interval (0 for one value)."""
    n = int(values.count())
    if n < 2:
        return float(values.mean()), 0.0
    return float(values.mean()), float(scipy_t.ppf(0.975, n - 1) * values.std(ddof=1) / n**0.5)


def _invariant(runs: pd.DataFrame) -> bool:
    """Whether every seed gives one value at every K: a norm trained once and reused across K."""
    return runs["norm_batch"].nunique() > 1 and bool((runs.groupby("seed")["test_error"].nunique() == 1).all())


def accuracy_vs_batch(
    acc: pd.DataFrame, path: str | Path, reference: bool = True, paired: pd.DataFrame | None = None
) -> Path | None:
    """Test error vs K, the samples per normalization batch (log2 axis, large to small as in the GN
    paper's Figure 1): a line per norm and evaluation (BatchNorm's running EMA, PreciseBN and batch
    statistics in three line styles), error bars = the 95% t interval of the mean over seeds; a norm that
    gives one value per seed at every K (trained once, reused across K) is one band over all K, not a
    bar at each. `paired` (normbench.report.accuracy_tables.paired_to_baseline) adds a panel per group: each
    norm's error minus BatchNorm's at the same K and seed, with its paired 95% interval. The GN paper's
    numbers in a panel beside, labelled as the different protocol they come from.

    `acc` holds one row per run and evaluation, with `test_error` (%) and `evaluation`
    (normbench.report.accuracy_tables.long_errors); without `evaluation` every row counts as eval mode."""
    acc = acc.dropna(subset=["test_error", "norm_batch"])
    if acc.empty:
        return None
    if "evaluation" not in acc:
        acc = acc.assign(evaluation="running")
    panels = _varying(acc, ["input", "dataset", "model", "impl", "setup", "epochs", "norm_position"])
    groups = list(acc.groupby(panels, dropna=False)) if panels else [((), acc)]
    palette = norm_palette([*acc["norm"], *(GN_PAPER_ERROR if reference else [])])
    diffs = [_group_of(paired, panels, key) for key, _ in groups] if paired is not None and not paired.empty else []
    ncols = len(groups) + sum(d is not None and not d.empty for d in diffs) + int(reference)
    sns.set_theme(style="whitegrid", context="notebook")
    fig, axes = plt.subplots(1, ncols, figsize=(6.2 * ncols, 4.8), squeeze=False)
    column = iter(axes[0])
    for i, (key, data) in enumerate(groups):
        ax = next(column)
        ks = sorted(data["norm_batch"].unique())
        have = set(zip(data["norm"], data["evaluation"]))
        for norm in palette:
            several = sum((norm, e) in have for e in EVALUATION_STYLE) > 1
            for evaluation, (ls, marker, style_suffix) in EVALUATION_STYLE.items():
                if (norm, evaluation) not in have:
                    continue
                runs = data[(data["norm"] == norm) & (data["evaluation"] == evaluation)]
                name = norm_label(norm) + (style_suffix or (" running EMA" if several else ""))
                if "seed" in runs and _invariant(runs):
                    mean, half = _mean_ci(runs.drop_duplicates("seed")["test_error"])
                    ax.plot(ks, [mean] * len(ks), ls=ls, color=palette[norm], lw=1.6, label=f"{name} (any K)")
                    ax.fill_between(ks, mean - half, mean + half, color=palette[norm], alpha=0.15, lw=0)
                    continue
                s = runs.groupby("norm_batch")["test_error"].apply(_mean_ci).apply(pd.Series)
                ax.errorbar(
                    s.index,
                    s[0],
                    yerr=s[1],
                    ls=ls,
                    marker=marker,
                    color=palette[norm],
                    capsize=3,
                    ms=6,
                    lw=1.6,
                    label=name,
                )
        _log2_axis(ax, data["norm_batch"], invert=True)
        first = data.iloc[0]
        what = ", ".join(str(first[c]) for c in ("dataset", "model") if c in data and pd.notna(first[c]))
        if "epochs" in data and data["epochs"].nunique() == 1 and pd.notna(first["epochs"]):
            what += f", {first['epochs']:g} epochs"
        extra = ", ".join(f"{c}={v}" for c, v in zip(panels, key if isinstance(key, tuple) else (key,)))
        seeds = data.groupby(["norm", "norm_batch"])["seed"].nunique() if "seed" in data else pd.Series([1])
        if seeds.max() == 1:
            spread = "one seed each (no error bars)"
        else:
            n = f"{seeds.min()}" if seeds.min() == seeds.max() else f"{seeds.min()}-{seeds.max()}"
            spread = f"mean and 95% CI over {n} seeds; bands: trained once, the same at every K"
        lines = ["normbench: " + (what or "test error"), _protocol_title(data), spread, extra]
        ax.set_title("\n".join(line for line in lines if line), fontsize=10)
        ax.set_xlabel("K: samples per normalization batch")
        ax.set_ylabel("test error (%)")
        ax.legend(fontsize=8, title="norm (evaluation)", title_fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
        if i < len(diffs) and diffs[i] is not None and not diffs[i].empty:
            _paired_panel(next(column), diffs[i], palette)
    if reference:
        ax = next(column)
        for norm, errors in GN_PAPER_ERROR.items():
            ax.plot(
                GN_PAPER_BATCH,
                errors,
                marker="o",
                ls="--",
                color=palette.get(norm, BASELINE_COLOR),
                label=norm_label(norm),
            )
        _log2_axis(ax, GN_PAPER_BATCH, invert=True)
        ax.set_title(
            "reference, a different protocol: GN paper (Wu & He 2018, Fig. 1)\nResNet-50 on ImageNet, "
            "8 GPUs fixed: global batch = 8K,\nLR scaled with it",
            fontsize=10,
        )
        ax.set_xlabel("K: images per GPU")
        ax.set_ylabel("validation error (%)")
        ax.legend(title="norm", fontsize=9)
    fig.suptitle("Test error vs the normalization batch K: smaller batches to the right", fontsize=12)
    fig.tight_layout()
    return _save(fig, Path(path))


def _group_of(frame: pd.DataFrame, panels: list[str], key) -> pd.DataFrame:
    """The rows of `frame` in one panel group (its `panels` columns equal to `key`)."""
    keep = pd.Series(True, index=frame.index)
    for col, value in zip(panels, key if isinstance(key, tuple) else (key,)):
        if col in frame:
            keep &= frame[col] == value
    return frame[keep]


def _paired_panel(ax, paired: pd.DataFrame, palette: dict[str, str]) -> None:
    """Each norm's test error minus the baseline's at the same K and seed, with the paired 95% interval."""
    for norm, rows in paired.groupby("norm"):
        g = rows.sort_values("norm_batch")
        color = palette.get(norm, BASELINE_COLOR)
        ax.plot(g["norm_batch"], g["estimate"], marker="o", ms=4, lw=1.4, color=color, label=norm_label(norm))
        ax.fill_between(g["norm_batch"], g["low"], g["high"], color=color, alpha=0.15, lw=0)
    ax.axhline(0, color="black", lw=0.8)
    _log2_axis(ax, paired["norm_batch"], invert=True)
    base = norm_label(str(paired["baseline"].iloc[0]))
    n = int(paired["n"].min())
    ax.set_title(
        f"paired difference to {base} (running EMA) at the same K and seed\nmean and 95% CI over {n} seeds "
        "(t; + bootstrap where skewed)",
        fontsize=10,
    )
    ax.set_xlabel("K: samples per normalization batch")
    ax.set_ylabel(f"test error - {base}'s (pp)")
    ax.legend(fontsize=8, title="norm", title_fontsize=8)


def lr_sensitivity(choices: pd.DataFrame, path: str | Path) -> Path | None:
    """Validation error vs LR (log axis) from the LR search, one line per configuration, one panel per
    norm, the chosen LR circled (`choices`: normbench.report.accuracy_tables.lr_curves)."""
    if choices is None or choices.empty:
        return None
    names = _ordered(choices["norm"].unique(), norm_order())
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4), squeeze=False, sharey=False)
    palette = norm_palette(names)
    for ax, norm in zip(axes[0], names):
        for r in choices[choices["norm"] == norm].itertuples():
            label = f"K={r.norm_batch}, {r.global_batch:g}/step" + (
                ", after" if getattr(r, "norm_position", "before") == "after" else ""
            )
            line = ax.plot([lr for lr, _ in r.grid], [e for _, e in r.grid], marker="o", ms=3, lw=1.2, label=label)[0]
            chosen = [e for lr, e in r.grid if lr == r.chosen]
            ax.plot([r.chosen], chosen, marker="o", ms=9, mfc="none", color=line.get_color())
        ax.set_xscale("log")
        _plain_log(ax.xaxis)
        ax.set_title(norm_label(norm), fontsize=10, color=palette[norm])
        ax.set_xlabel("grid LR")
        ax.legend(fontsize=6, framealpha=0.6)
    axes[0][0].set_ylabel("validation error (%)")
    fig.suptitle(
        "LR search on a validation split of the training data; LR per lr_reference.batch samples (circled: chosen)",
        fontsize=10,
    )
    fig.tight_layout()
    return _save(fig, Path(path))


# ------------------------------------------------------------------------------------------------ speed


def shape_features(shape) -> str:
    """The shape without its batch dimension: `(8, 64, 32, 32)` -> `64x32x32`."""
    dims = re.findall(r"\d+", str(shape))
    return "x".join(dims[1:]) if len(dims) > 1 else str(shape)


def _speed_frame(speed: pd.DataFrame) -> tuple[pd.DataFrame, str | None]:
    d = speed.dropna(subset=["median_ms", "batch_size"]).copy()
    d["facet"] = d["pass"].astype(str) if "pass" in d else "all"
    if "dtype" in d:
        d["facet"] = d["facet"] + " · " + d["dtype"].astype(str)
    parts = []
    if "shape" in d:
        d["features"] = d["shape"].map(shape_features)
        parts.append("features")
    parts += [c for c in ("layout", "groups", "device_name", "input") if c in d]  # input: sources apart
    varying = _varying(d, parts, within="norm")
    if not varying:
        return d, None
    d["config"] = d[varying].map(lambda v: label(v) or "-").agg(" · ".join, axis=1)
    return d, "config"


def _speed_grid(speed: pd.DataFrame, y: str, ylabel: str, title: str, logy: bool):
    d, style = _speed_frame(speed)
    if d.empty or y not in d or d[y].notna().sum() == 0:
        return None
    rows = _ordered(d["norm"], norm_order())
    facets = sorted(
        d["facet"].unique(),
        key=lambda f: (PASS_ORDER.index(f.split(" · ")[0]) if f.split(" · ")[0] in PASS_ORDER else 99, f),
    )
    palette = impl_palette(d["impl"])
    sns.set_theme(style="whitegrid", context="notebook")
    g = sns.relplot(
        data=d,
        kind="line",
        x="batch_size",
        y=y,
        hue="impl",
        hue_order=list(palette),
        palette=palette,
        style=style,
        row="norm",
        row_order=rows,
        col="facet",
        col_order=facets,
        marker="o",
        height=2.9,
        aspect=1.35,
        facet_kws={"sharey": False, "margin_titles": False},
        errorbar=None,
    )
    g.set_titles("{row_name} · {col_name}")
    colours = norm_palette(rows)
    for (norm, _), ax in g.axes_dict.items():
        ax.title.set_color(colours[norm])
        ax.title.set_fontweight("bold")
        _log2_axis(ax, d["batch_size"])
        if logy:
            ax.set_yscale("log")
            _plain_log(ax.yaxis)
    g.set_axis_labels("batch size N (log2 scale)", ylabel)
    if g.legend is not None:
        g.legend.set_title("implementation" + (" / config" if style else ""))
    g.figure.suptitle(title, fontsize=12)
    g.figure.subplots_adjust(top=1 - 0.6 / (2.9 * len(rows)) - 0.02)
    return g


def speed_latency(speed: pd.DataFrame, path: str | Path) -> Path | None:
    """Median latency (ms, log axis) vs batch size; colour = implementation; a row of facets per norm,
    a column per pass and dtype."""
    g = _speed_grid(speed, "median_ms", "median latency (ms)", "Latency vs batch size (lower is better)", True)
    return None if g is None else _save(g.figure, Path(path))


def speed_roofline(speed: pd.DataFrame, path: str | Path) -> Path | None:
    """Achieved bandwidth as % of the measured copy bandwidth (the roofline, drawn at 100%) vs batch size."""
    if "pct_of_peak" not in speed or speed["pct_of_peak"].notna().sum() == 0:
        return None
    g = _speed_grid(
        speed,
        "pct_of_peak",
        "% of roofline (bandwidth)",
        "Achieved memory bandwidth as % of the measured copy bandwidth (roofline = 100%)",
        False,
    )
    if g is None:
        return None
    top = max(110.0, float(speed["pct_of_peak"].max()) * 1.08)
    for ax in g.axes.flat:
        ax.axhline(100, color="black", ls="--", lw=1.2)
        ax.text(0.02, 100, " roofline", transform=ax.get_yaxis_transform(), va="bottom", fontsize=8)
        ax.set_ylim(0, top)
    return _save(g.figure, Path(path))


# ------------------------------------------------------------------------------------- speed x accuracy


def pick_speed(speed: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """Per norm, one latency to set against accuracy: the `fwdbwd` pass (what training pays; else what
    was timed), of `native` (else the fastest implementation), at the largest batch size timed."""
    d = speed.dropna(subset=["median_ms"])
    passes = [p for p in ("fwdbwd", "fwd", "bwd") if "pass" in d and (d["pass"] == p).any()]
    if passes:
        d = d[d["pass"] == passes[0]]
    rows, impls = [], set()
    for norm, runs in d.groupby("norm"):
        largest = runs[runs["batch_size"] == runs["batch_size"].max()]
        native = largest["impl"] == "native"
        g = largest[native] if native.any() else largest.nsmallest(1, "median_ms")
        impls |= set(g["impl"])
        rows.append({"norm": norm, "median_ms": g["median_ms"].median(), "batch_size": g["batch_size"].iloc[0]})
    label = f"{passes[0] if passes else 'all passes'} latency of {', '.join(sorted(impls))}"
    return pd.DataFrame(rows), label


def speed_vs_accuracy(speed: pd.DataFrame, acc: pd.DataFrame, path: str | Path) -> Path | None:
    """Per norm: latency (x) against test error (y) at the smallest and the largest batch per worker."""
    acc = acc.dropna(subset=["test_error", "norm_batch"])
    if speed.empty or acc.empty:
        return None
    lat, label = pick_speed(speed)
    small, large = acc["norm_batch"].min(), acc["norm_batch"].max()
    err = acc[acc["norm_batch"].isin([small, large])].groupby(["norm", "norm_batch"])["test_error"].mean()
    both = [n for n in _ordered(lat["norm"], norm_order()) if n in err.index.get_level_values(0)]
    if not both:
        return None
    palette = norm_palette(both)
    sns.set_theme(style="whitegrid", context="notebook")
    fig, ax = plt.subplots(figsize=(6.4, 4.6))
    for norm in both:
        x = float(lat.loc[lat["norm"] == norm, "median_ms"].iloc[0])
        y_large, y_small = err.get((norm, large)), err.get((norm, small))
        ax.plot([x, x], [y_large, y_small], color=palette[norm], lw=1.5, alpha=0.6)
        ax.scatter([x], [y_large], color=palette[norm], marker="o", s=60, zorder=3)
        ax.scatter([x], [y_small], color=palette[norm], marker="v", s=70, zorder=3)
        ax.annotate(
            norm_label(norm),
            (x, y_small),
            textcoords="offset points",
            xytext=(6, 0),
            color=palette[norm],
            fontsize=9,
            va="center",
        )
    ax.scatter([], [], color="grey", marker="o", label=f"batch {large:g} per worker")
    ax.scatter([], [], color="grey", marker="v", label=f"batch {small:g} per worker")
    ax.legend(title="test error at", fontsize=9)
    ax.set_xlim(0, float(lat["median_ms"].max()) * 1.25)
    b = lat["batch_size"].max()
    ax.set_xlabel(f"median latency (ms): {label}, batch {b:g}")
    ax.set_ylabel("test error (%), mean over seeds")
    ax.set_title("Speed vs accuracy per norm (lower left is better)", fontsize=11)
    fig.tight_layout()
    return _save(fig, Path(path))


# ----------------------------------------------------------------------------------------- the claims


def convergence_curves(
    curves: dict[str, list[pd.DataFrame]],
    steps_per_epoch: dict[str, float],
    level: float,
    path: str | Path,
    intervals: list[tuple[str, float, float, float, str]] | None = None,
    margin: float | None = None,
) -> Path | None:
    """Train loss vs optimizer step per norm (one thin line per seed, per-epoch points), with the loss
    level that the notebook's claim C5 is judged at (normbench.report.claims); beside it, where `intervals` are
    given, each comparison's paired difference with its 95% interval, (label, estimate, low, high,
    verdict) in percentage points, against 0 and the equivalence margin."""
    if not curves:
        return None
    colors = norm_palette(curves)
    wide = bool(intervals)
    fig, axes = plt.subplots(
        1,
        2 if wide else 1,
        figsize=(13, max(3.6, 0.38 * len(intervals or []) + 1.2)) if wide else (6, 3.6),
        squeeze=False,
        gridspec_kw={"width_ratios": [1, 1.25]} if wide else None,
    )
    ax = axes[0][0]
    for norm, runs in curves.items():
        for i, curve in enumerate(runs):
            ax.plot(
                curve["epoch"] * steps_per_epoch[norm],
                curve["train_loss"],
                marker="o",
                ms=3,
                lw=1.2,
                color=colors[norm],
                alpha=0.8,
                label=norm_label(norm) if i == 0 else None,
            )
    ax.axhline(level, color="black", ls="--", lw=0.8)
    ax.annotate(f"level {level:.3f}", (ax.get_xlim()[1], level), ha="right", va="bottom", fontsize=8)
    ax.set_xlabel("optimizer step (end of each epoch)")
    ax.set_ylabel("train loss (epoch mean)")
    ax.set_title("C5: steps to the loss level, one line per seed", fontsize=10)
    ax.legend(frameon=False)
    if wide:
        _interval_panel(axes[0][1], intervals, margin)
    sns.despine(fig)
    fig.tight_layout()
    return _save(fig, Path(path))


VERDICT_COLORS = {"supported": "#009E73", "not supported": "#D55E00", "equal": "#0072B2"}


def _interval_panel(ax, intervals: list[tuple[str, float, float, float, str]], margin: float | None) -> None:
    """A forest plot: one row per comparison, its estimate and 95% interval coloured by verdict."""
    for y, (_, est, low, high, verdict) in enumerate(reversed(intervals)):
        color = VERDICT_COLORS.get(verdict, BASELINE_COLOR)
        ax.plot([low, high], [y, y], color=color, lw=2.2)
        ax.plot([est], [y], marker="o", color=color, ms=5)
    ax.set_yticks(range(len(intervals)), [i[0] for i in reversed(intervals)], fontsize=7)
    ax.axvline(0, color="black", lw=0.8)
    if margin:
        ax.axvspan(-margin, margin, color="#999999", alpha=0.15, lw=0)
    ax.set_xlabel("A - B (pp), paired by seed: mean and 95% CI")
    shown = ", ".join(f"{v} ({c})" for v, c in (("supported", "green"), ("not supported", "orange"), ("equal", "blue")))
    ax.set_title(f"The claims' comparisons; grey band: ±{margin:g} pp margin\n{shown}, grey: inconclusive", fontsize=9)
