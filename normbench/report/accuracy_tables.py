"""The accuracy part of a report, as pandas: test error per evaluation, mean ± sd over seeds, the table
per setup, and the headline sentence that states the measured effect.

A run's rows hold up to three test accuracies (docs/accuracy.md): `test_acc` (eval mode: BatchNorm on
its running EMA), `test_acc_precise_bn` (PreciseBN population statistics) and `test_acc_batch_stats`
(batch statistics at K). Here each becomes its own measurement, named by `evaluation`.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from normbench import norms
from normbench.io import swept
from normbench.report import stats
from normbench.report.plots import norm_label, norm_order, position, rank
from normbench.train import lr_search

EVALUATIONS = {"test_acc": "running", "test_acc_precise_bn": "PreciseBN", "test_acc_batch_stats": "batch stats"}
EVALUATION_ORDER = list(EVALUATIONS.values())


def test_error(acc: pd.DataFrame, column: str = "test_acc") -> pd.Series:
    """Test error in % from an accuracy column, a fraction in [0, 1] (read as % if any value exceeds 1)."""
    a = pd.to_numeric(acc[column], errors="coerce")
    return 100.0 - a if (a > 1).any() else 100.0 * (1.0 - a)


def with_setup(acc: pd.DataFrame) -> pd.DataFrame:
    """Add `setup`: what a sweep over K holds fixed, e.g. `64 samples per step` or `8 workers`.

    Rows from before `protocol` was recorded ran the fixed-workers protocol."""
    acc = acc.copy()
    protocol = acc["protocol"] if "protocol" in acc else pd.Series("workers", index=acc.index)
    fixed_global = protocol.fillna("workers").eq("global_batch")

    def num(col: str) -> pd.Series:
        return pd.to_numeric(acc[col], errors="coerce") if col in acc else pd.Series(float("nan"), index=acc.index)

    acc["setup"] = [
        f"{g:g} samples per step" if fixed else (f"{w:g} worker" + "s" * (w != 1) if pd.notna(w) else "")
        for fixed, g, w in zip(fixed_global, num("global_batch"), num("workers"))
    ]
    return swept.add(acc, list(GROUP_COLUMNS) + RUN_KEYS)[0]


def long_errors(acc: pd.DataFrame) -> pd.DataFrame:
    """One row per run and evaluation that has a value: the run's columns, `evaluation`, `test_error` (%)."""
    frames = []
    for column, name in EVALUATIONS.items():
        if column in acc:
            has = pd.to_numeric(acc[column], errors="coerce").notna()
            frames.append(acc[has].assign(evaluation=name, test_error=test_error(acc[has], column)))
    return pd.concat(frames, ignore_index=True) if frames else acc.iloc[0:0].assign(evaluation=[], test_error=[])


GROUP_COLUMNS = ("input", "dataset", "model", "impl", "setup", "epochs", "norm_position")  # input: never pooled
RUN_KEYS = ["norm_batch", "norm"]


def accuracy_groups(acc: pd.DataFrame) -> list[str]:
    """The columns besides norm, K and seed that vary (each value gets its own table), and every key
    the sweep varied that these do not tell apart (`normbench.io.swept`, added by `with_setup`)."""
    cols = [c for c in GROUP_COLUMNS if c in acc and acc[c].nunique() > 1]
    return cols + swept.add(acc, cols + RUN_KEYS)[1]


def accuracy_stats(acc: pd.DataFrame) -> pd.DataFrame:
    """Per (group,) K, norm and evaluation: seeds, mean and sd of the test error (%)."""
    long = long_errors(with_setup(acc))
    keys = accuracy_groups(long) + ["norm_batch", "norm", "evaluation"]
    stats = long.groupby(keys, dropna=False)["test_error"].agg(n="count", mean="mean", sd="std").reset_index()
    order = {"norm": norm_order(), "evaluation": EVALUATION_ORDER}
    return stats.sort_values(keys, key=lambda s: rank(s, order[s.name]) if s.name in order else s)


def _in_order(names: pd.Series) -> list[str]:
    """The distinct norm names, in registry order."""
    order = norm_order()
    return sorted(names.unique(), key=lambda name: position(name, order))


def series_name(norm: str, evaluation: str) -> str:
    """A table column: the norm, plus the evaluation where it is not the running statistics (eval mode)."""
    return norm if evaluation == "running" else f"{norm} {evaluation}"


def _cell(mean: float, sd: float, n: int) -> str:
    return f"{mean:.2f} ± {sd:.2f}" if n > 1 else f"{mean:.2f}"


def accuracy_table(stats: pd.DataFrame) -> pd.DataFrame:
    """One group's table: a row per K (large to small), a column per norm and evaluation (`mean ± sd`),
    and the best (lowest mean error)."""
    stats = stats.assign(series=[series_name(n, e) for n, e in zip(stats["norm"], stats["evaluation"])])
    columns = list(dict.fromkeys(stats["series"]))  # stats come sorted by norm, then evaluation
    rows = []
    for k, g in stats.groupby("norm_batch"):
        row: dict[str, Any] = {"K": int(k) if float(k).is_integer() else k}
        for name in columns:
            r = g[g["series"] == name]
            row[name] = "" if r.empty else _cell(r["mean"].iloc[0], r["sd"].iloc[0], int(r["n"].iloc[0]))
        best = g[g["mean"] <= g["mean"].min() + 1e-9]  # ties: every series at the lowest mean
        row["best"] = f"{', '.join(best['series'])} ({best['mean'].iloc[0]:.2f})"
        rows.append(row)
    return pd.DataFrame(rows).sort_values("K", ascending=False).reset_index(drop=True)


# ------------------------------------------------------------------------------------------ the headline


def _independent(norm: str) -> bool:
    try:
        return norms.batch_independent(norm)
    except ValueError:  # a norm this version does not know: make no claim for it
        return False


def _err(stats: pd.DataFrame, norm: str, evaluation: str, k) -> str | None:
    """`mean ± sd%` of one norm's test error at K under one evaluation, or None where it did not run."""
    r = stats[(stats["norm"] == norm) & (stats["evaluation"] == evaluation) & (stats["norm_batch"] == k)]
    if r.empty:
        return None
    mean, sd, n = r["mean"].iloc[0], r["sd"].iloc[0], int(r["n"].iloc[0])
    return f"{mean:.1f} ± {sd:.1f}%" if n > 1 else f"{mean:.1f}%"


def _identical_across_k(runs: pd.DataFrame) -> bool:
    """Whether every seed's runs give the same test accuracy at every K (K-invariant, as it must be at
    a fixed global batch for a norm whose statistics do not span samples)."""
    return (
        bool((runs.groupby("seed")["test_acc"].nunique(dropna=False) == 1).all()) and runs["norm_batch"].nunique() > 1
    )


def headline(acc: pd.DataFrame) -> str:
    """The measured effect of K in a sentence or two, with numbers and their spread over seeds, for
    one group of runs (one setup): each norm whose error depends on K at the smallest K vs 32 (or the
    largest), and the norms that do not depend on it."""
    acc = with_setup(acc)
    stats = accuracy_stats(acc)
    ks = sorted(stats["norm_batch"].unique())
    small = ks[0]
    large = 32 if 32 in ks and small != 32 else ks[-1]
    seeds = acc.groupby(["norm", "norm_batch"])["seed"].nunique()
    spread = f"mean ± sd over {seeds.min()} seeds" if seeds.min() > 1 else "one seed, so no spread"
    setup = acc["setup"].iloc[0]
    by_construction = setup.endswith("per step")  # at a fixed global batch, K cannot reach their training
    one_lr = "lr" not in acc or acc["lr"].nunique() <= 1
    fixed = (
        f"{setup}, the same steps {'and LR ' if one_lr else ''}for every K"
        + ("" if one_lr else " (each norm's LR searched, and BatchNorm's per K: accuracy.lr_search)")
        if by_construction
        else f"{setup}: the global batch and LR grow with K"
    )
    order = _in_order(acc["norm"])
    invariant = [n for n in order if _independent(n) and _identical_across_k(acc[acc["norm"] == n])]
    sentences, others = [], []
    for norm in order:
        if norm in invariant:
            continue
        name = norm_label(norm)
        a, b = _err(stats, norm, "running", small), _err(stats, norm, "running", large)
        if a is None or b is None:
            continue
        sentences.append(f"**{name}**: test error {a} at {small:g} per normalization batch vs {b} at {large:g}")
        for evaluation, label in (("PreciseBN", "with PreciseBN"), ("batch stats", "with batch statistics at K")):
            pa, pb = _err(stats, norm, evaluation, small), _err(stats, norm, evaluation, large)
            if pa and pb:
                others.append(f"{name} {label}: {pa} vs {pb}")
    text = ". ".join(sentences)
    if text:
        text += f" (eval mode, running statistics; {spread}; {fixed})."
    if invariant:
        names = "/".join(norm_label(n) for n in invariant)
        values = ", ".join(f"{norm_label(n)} {_err(stats, n, 'running', small)}" for n in invariant)
        why = "identical by construction" if by_construction else "the same in every run of these rows"
        text += f" {names} do not depend on it ({why} at every K: {values})."
    if others:
        text += " " + "; ".join(others) + "."
    return text.strip()


def reuse_note(acc: pd.DataFrame) -> str | None:
    """What the report says about rows that reuse another job's training, or None if none do."""
    if "reused_from" not in acc or acc["reused_from"].isna().all():
        return None
    reused = acc[acc["reused_from"].notna()]
    names = "/".join(norm_label(n) for n in _in_order(reused["norm"]))
    return (
        f"{len(reused)} of {len(acc)} rows ({names}) reuse the training of another job of the sweep (column "
        f"`reused_from` names it): these norms never take statistics across samples, so at a fixed global batch "
        f"K changes nothing in their training, and each was trained once per seed (normbench/train/reuse.py; "
        f"tests/test_accuracy.py checks that the models are bit-identical across K)."
    )


# ------------------------------------------------------------------------------- paired against BatchNorm


def paired_to_baseline(acc: pd.DataFrame, baseline: str = "bn") -> pd.DataFrame:
    """Per (group,) K and norm: the test error (eval mode) minus the baseline's at the same K and seed, in
    percentage points, with its paired 95% confidence interval (normbench.report.stats.paired) over the seeds
    both ran; empty where the baseline did not run or fewer than 2 seeds match."""
    long = long_errors(with_setup(acc))
    long = long[long["evaluation"] == "running"]
    keys = accuracy_groups(long) + ["norm_batch"]
    rows = []
    for key, g in long.groupby(keys, dropna=False):
        base = g[g["norm"] == baseline].drop_duplicates("seed").set_index("seed")["test_error"]
        for norm, runs in g[g["norm"] != baseline].groupby("norm"):
            arm = runs.drop_duplicates("seed").set_index("seed")["test_error"]
            seeds = arm.index.intersection(base.index)
            if len(seeds) < 2:
                continue
            ci = stats.paired(arm.loc[seeds].to_numpy(float), base.loc[seeds].to_numpy(float))
            rows.append(
                {
                    **dict(zip(keys, key if isinstance(key, tuple) else (key,))),
                    "norm": norm,
                    "baseline": baseline,
                    "n": ci.n,
                    "estimate": ci.estimate,
                    "low": ci.low,
                    "high": ci.high,
                    "method": ci.method,
                }
            )
    return pd.DataFrame(rows)


def paired_table(paired: pd.DataFrame) -> pd.DataFrame:
    """One group's paired differences: a row per K (large to small), a column per norm, `d [low, high]`."""
    rows = []
    for k, g in paired.groupby("norm_batch"):
        row: dict[str, Any] = {"K": int(k) if float(k).is_integer() else k}
        for r in g.sort_values("norm", key=lambda s: rank(s, norm_order())).itertuples():
            row[f"{r.norm} - {r.baseline}"] = f"{r.estimate:+.2f} [{r.low:+.2f}, {r.high:+.2f}]"
        row["seeds"] = int(g["n"].min())
        rows.append(row)
    return pd.DataFrame(rows).sort_values("K", ascending=False).reset_index(drop=True)


LR_KEYS = ("norm", "norm_position", "norm_batch", "global_batch", "epochs")


def _lr_order(values: pd.Series) -> pd.Series:
    if values.name == "norm":
        return rank(values, norm_order())
    return pd.to_numeric(values, errors="coerce") if values.name == "norm_batch" else values


def lr_curves(acc: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration that ran the LR search: its LR_KEYS, `grid` [(lr, validation error %)]
    and `chosen` (per lr_reference.batch samples); empty without a search."""
    if "lr_grid" not in acc or acc["lr_grid"].isna().all():
        return pd.DataFrame()
    keys = [c for c in LR_KEYS if c in acc]
    runs = acc[acc["lr_grid"].notna()].copy()
    # A norm that cannot see K searched once for every K (normbench/train/accuracy.py, choose_lr): one row, K "any".
    shared = runs["norm"].map(_independent) & (runs["protocol"] == "global_batch" if "protocol" in runs else False)
    runs["norm_batch"] = runs["norm_batch"].astype(object).where(~shared, "any")
    runs = runs.drop_duplicates(keys + ["lr_grid"])
    runs = runs.sort_values(keys, key=_lr_order)
    return runs[keys].assign(
        grid=[lr_search.parse_grid(g) for g in runs["lr_grid"]], chosen=pd.to_numeric(runs["lr_chosen"]).to_numpy()
    )


def lr_choices(curves: pd.DataFrame) -> pd.DataFrame:
    """`lr_curves` as a table: the LR chosen (marked where it is at the edge of the grid) and the
    validation error (%) of each grid LR."""
    rows = []
    for r in curves.itertuples(index=False):
        edge = r.chosen in (r.grid[0][0], r.grid[-1][0])
        rows.append(
            {
                **{c: getattr(r, c) for c in LR_KEYS if c in curves},
                "lr chosen": f"{r.chosen:g}" + (" (grid edge)" if edge else ""),
                "validation error (%) per LR": ", ".join(f"{lr:g}: {e:.1f}" for lr, e in r.grid),
            }
        )
    return pd.DataFrame(rows)
