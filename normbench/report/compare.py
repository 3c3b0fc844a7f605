"""`normbench-report --compare A B`: B against A, configuration by configuration, each side's spread shown.

In the spirit of `pytest-benchmark compare`: the two inputs are never pooled; for every configuration
both measured (the same norm, implementation, pass, shape, ...: the device may differ, since comparing
machines is one use) it gives each side's value with its spread and the ratio B/A:

- speed: median ms, spread p20-p80 (pytest-benchmark: q1-q3); B/A below 1 means B is faster;
- accuracy: test error (%) mean ± sd over seeds; B/A below 1 means B errs less.

The verdict says `B faster` / `B slower` (`B better` / `B worse`) only when the two spreads do not
overlap and, for times, B/A is beyond the noise floor (`noise_floor`: it grows with the spreads the
two runs show; or `--noise`), else `within noise`; a side with one seed has no spread to judge by.
Configurations only one side has are listed too. Writes `compare.md`, `compare.html`, `compare.csv` and `compare.png`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from normbench.errors import UsageError
from normbench.io import results, swept
from normbench.report.plots import _save, label

# The columns that name a configuration, per kind (those present in the data are used).
CONFIG_KEYS = {
    "speed": ["model", "norm", "impl", "pass", "batch_size", "shape", "dtype", "layout", "groups"],
    "benchmark": ["group", "benchmark"],
    "accuracy": ["dataset", "model", "norm", "impl", "norm_batch", "workers", "epochs", "norm_position"],
}
COMPARE_MD, COMPARE_HTML, COMPARE_CSV, COMPARE_PNG = "compare.md", "compare.html", "compare.csv", "compare.png"


def side_stats(rows: pd.DataFrame, kind: str, keys: list[str]) -> pd.DataFrame:
    """Per configuration: value, spread (lo, hi) and count, of one side's ok rows of one kind."""
    if rows.empty:  # the kind only the other side measured
        return pd.DataFrame(columns=[*keys, "value", "lo", "hi", "n"])
    d = rows.copy()
    if kind == "accuracy":
        from normbench.report.document import test_error

        d["value"] = test_error(d)
        g = d.groupby(keys, dropna=False)["value"]
        out = g.agg(value="mean", sd="std", n="count").reset_index()
        out["sd"] = out["sd"].where(out["n"] > 1)
        out["lo"], out["hi"] = out["value"] - out["sd"], out["value"] + out["sd"]
        return out.drop(columns="sd")
    lo_col, hi_col = (
        ("p20_ms", "p80_ms") if d.get("p20_ms", pd.Series(dtype=float)).notna().any() else ("q1_ms", "q3_ms")
    )
    for col in ("median_ms", lo_col, hi_col):
        d[col] = pd.to_numeric(d[col], errors="coerce") if col in d else np.nan
    out = d.groupby(keys, dropna=False).agg(
        value=("median_ms", "median"), lo=(lo_col, "median"), hi=(hi_col, "median"), n=("median_ms", "count")
    )
    return out.reset_index()


# The smallest change in time a verdict names, as a factor (B/A or A/B): exp(NOISE_K x the median of
# ln(hi/lo) over both sides' rows). Two runs of one command differ by more than each run's own p20-p80
# (a shared machine's load changes between jobs, not within one), and by more the busier the machine,
# which widens those spreads too: so the floor scales with the spreads the two runs show. NOISE_K from
# six A/A comparisons of the reduced default CPU sweep on a shared 2-core VM, which needed 3.9 to 5.8
# (docs/report.md, "Noise"). `--noise` sets a fixed floor instead.
NOISE_K = 6.0


def noise_floor(table: pd.DataFrame) -> float:
    """The floor for one kind's comparison table (value, lo, hi per side); 1 where no spread is known."""
    spreads = [np.log(table[f"hi_{s}"] / table[f"lo_{s}"]) for s in "ab" if f"lo_{s}" in table]
    logs = pd.concat(spreads).replace([np.inf, -np.inf], np.nan).dropna() if spreads else pd.Series(dtype=float)
    logs = logs[logs >= 0]
    return float(np.exp(NOISE_K * logs.median())) if len(logs) else 1.0


def _verdict(row: pd.Series, kind: str, floor: float = 1.0) -> str:
    if pd.isna(row["value_a"]) or pd.isna(row["value_b"]):
        return "only in A" if pd.isna(row["value_b"]) else "only in B"
    if pd.isna(row["lo_a"]) or pd.isna(row["lo_b"]):
        return "no spread to judge by"
    if 1 / floor < row["ratio"] < floor:
        return "within noise"
    if row["lo_b"] > row["hi_a"]:
        return "B slower" if kind != "accuracy" else "B worse"
    if row["hi_b"] < row["lo_a"]:
        return "B faster" if kind != "accuracy" else "B better"
    return "within noise"


def compare_kind(a: pd.DataFrame, b: pd.DataFrame, kind: str, noise: float | None = None) -> pd.DataFrame:
    """One row per configuration of `kind` either side measured: each side's value, spread and n,
    B/A, the range of B/A the spreads allow, and the verdict: a change in time only where the spreads
    do not overlap and B/A is beyond the noise floor (`noise`, else `noise_floor`)."""
    keys = [k for k in CONFIG_KEYS[kind] if any(k in s and s[k].notna().any() for s in (a, b))]
    # A key either side's sweep varied that these do not tell apart is a key too (normbench.io.swept).
    rows, extra = swept.add(pd.concat([a.assign(side="a"), b.assign(side="b")], ignore_index=True), keys)
    a, b = (rows[rows["side"] == side].drop(columns="side") for side in "ab")
    keys += extra
    for side in (a, b):
        for k in keys:
            side[k] = side[k].map(label) if k in side else ""
    sa, sb = side_stats(a, kind, keys), side_stats(b, kind, keys)
    both = sa.merge(sb, on=keys, how="outer", suffixes=("_a", "_b"))
    both["ratio"] = both["value_b"] / both["value_a"]
    both["ratio_lo"] = both["lo_b"] / both["hi_a"]  # the spreads' extremes, B low over A high
    both["ratio_hi"] = both["hi_b"] / both["lo_a"]
    floor = 1.0 if kind == "accuracy" else (noise or noise_floor(both))  # accuracy: the sd over seeds
    both["verdict"] = both.apply(_verdict, axis=1, kind=kind, floor=floor)
    both["noise_floor"] = floor
    both.insert(0, "kind", kind)
    return both.reset_index(drop=True)


def _one_source(frame: pd.DataFrame, path: Path) -> pd.DataFrame:
    sources = frame.loc[frame["status"] == "ok", "input"].dropna().unique()
    if len(sources) > 1:
        raise UsageError(
            f"{path} holds measurements from {len(sources)} inputs ({', '.join(map(str, sources))}): compare one "
            "source per side, e.g. normbench-report --compare SWEEP_A SWEEP_B"
        )
    return frame[frame["status"] == "ok"]


def compare(path_a: str | Path, path_b: str | Path, noise: float | None = None) -> pd.DataFrame:
    """The comparison table of B against A (see the module's docstring)."""
    path_a, path_b = Path(path_a), Path(path_b)
    if path_a.resolve() == path_b.resolve():
        raise UsageError(f"--compare needs two different inputs, got {path_a} twice")
    a = _one_source(results.read([path_a]), path_a)
    b = _one_source(results.read([path_b]), path_b)
    kinds_a, kinds_b = set(a["kind"].dropna()) & set(CONFIG_KEYS), set(b["kind"].dropna()) & set(CONFIG_KEYS)
    if kinds_a and kinds_b and not kinds_a & kinds_b:
        raise UsageError(
            f"{path_a} holds {'/'.join(sorted(kinds_a))} measurements and {path_b} {'/'.join(sorted(kinds_b))}: "
            "--compare sets two inputs of the same kind against each other, e.g. two speed sweeps"
        )
    tables = [
        compare_kind(a[a["kind"] == kind].copy(), b[b["kind"] == kind].copy(), kind, noise)
        for kind in CONFIG_KEYS
        if (a["kind"] == kind).any() or (b["kind"] == kind).any()
    ]
    if not tables:
        raise UsageError(f"neither {path_a} nor {path_b} holds a measurement to compare")
    return pd.concat(tables, ignore_index=True)


def _fmt(value: float, lo: float, hi: float, kind: str, n) -> str:
    if pd.isna(value):
        return ""
    if kind == "accuracy":
        return f"{value:.2f} ± {(hi - value):.2f} (n={n:g})" if pd.notna(hi) else f"{value:.2f} (n={n:g})"
    spread = f" [{lo:.4g}-{hi:.4g}]" if pd.notna(lo) and pd.notna(hi) else ""
    return f"{value:.4g}{spread}"


STAT_COLUMNS = {"kind", "ratio", "ratio_lo", "ratio_hi", "verdict", "noise_floor"} | {
    f"{c}_{side}" for c in ("value", "lo", "hi", "n") for side in "ab"
}


def _shown_keys(t: pd.DataFrame, kind: str) -> list[str]:
    """One kind's configuration columns that vary (the first two where none does), then every key a
    sweep varied beyond CONFIG_KEYS (normbench.io.swept): the columns that tell its rows apart."""
    present = [k for k in CONFIG_KEYS[kind] if k in t]
    keys = [k for k in present if t[k].nunique() > 1] or present[:2]
    extra = [c for c in t if c not in STAT_COLUMNS and c not in present and t[c].notna().any()]
    known = {k for ks in CONFIG_KEYS.values() for k in ks}
    return keys + [c for c in extra if c not in known]


def shown(table: pd.DataFrame, kind: str, names: tuple[str, str]) -> pd.DataFrame:
    """One kind's table as shown: configuration columns that vary, A, B, B/A (range), verdict."""
    t = table[table["kind"] == kind]
    keys = _shown_keys(t, kind)
    what = "test error %, mean ± sd" if kind == "accuracy" else "median ms [p20-p80 or q1-q3]"
    out = t[keys].copy()
    for side, name in zip("ab", names):
        out[f"{name} ({what})"] = [
            _fmt(v, lo, hi, kind, n)
            for v, lo, hi, n in zip(t[f"value_{side}"], t[f"lo_{side}"], t[f"hi_{side}"], t[f"n_{side}"])
        ]
    out["B/A"] = [
        "" if pd.isna(r) else f"{r:.3f}" + (f" ({lo:.3f}-{hi:.3f})" if pd.notna(lo) and pd.notna(hi) else "")
        for r, lo, hi in zip(t["ratio"], t["ratio_lo"], t["ratio_hi"])
    ]
    out["verdict"] = t["verdict"]
    return out.reset_index(drop=True)


def plot(table: pd.DataFrame, path: Path, names: tuple[str, str]) -> Path | None:
    """B/A per configuration (log axis), the bar spanning what the two spreads allow; 1 = no change."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    t = table.dropna(subset=["ratio"])
    if t.empty:
        return None
    kinds = list(dict.fromkeys(t["kind"]))
    sns.set_theme(style="whitegrid", context="notebook")
    heights = [max(1.5, 0.22 * (t["kind"] == k).sum() + 0.8) for k in kinds]
    fig, axes = plt.subplots(
        len(kinds), 1, figsize=(9, sum(heights)), squeeze=False, gridspec_kw={"height_ratios": heights}
    )
    colors = {"B faster": "#1B9E77", "B better": "#1B9E77", "B slower": "#D95F02", "B worse": "#D95F02"}
    for ax, kind in zip(axes[:, 0], kinds):
        part = t[t["kind"] == kind]
        keys = _shown_keys(part, kind)
        labels = [" · ".join(str(v) for v in row if str(v)) for row in part[keys].itertuples(index=False)]
        y = np.arange(len(part))
        lo = (part["ratio"] - part["ratio_lo"]).clip(lower=0).fillna(0)
        hi = (part["ratio_hi"] - part["ratio"]).clip(lower=0).fillna(0)
        ax.errorbar(part["ratio"], y, xerr=[lo, hi], fmt="none", ecolor="#999999", capsize=2)
        ax.scatter(part["ratio"], y, c=[colors.get(v, "#555555") for v in part["verdict"]], zorder=3, s=22)
        ax.axvline(1.0, color="black", lw=1)
        ax.set_yticks(y, labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        what = "test error" if kind == "accuracy" else "median time"
        ax.set_xlabel(
            f"{what}: {names[1]} / {names[0]} (below 1: {names[1]} is {'better' if kind == 'accuracy' else 'faster'})"
        )
        ax.set_title(f"{kind}: B/A per configuration (bar: the range the two spreads allow)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def write(path_a: str | Path, path_b: str | Path, out_dir: str | Path, noise: float | None = None) -> Path:
    """Compare B with A into `out_dir`; return the path of `compare.md`."""
    from normbench.report.document import Document

    path_a, path_b, out = Path(path_a), Path(path_b), Path(out_dir)
    table = compare(path_a, path_b, noise)
    out.mkdir(parents=True, exist_ok=True)
    names = (f"A = {path_a.name}", f"B = {path_b.name}")
    title = f"normbench comparison: {path_b.name} (B) against {path_a.name} (A)"
    doc = Document(out)
    doc.heading(1, title)
    doc.bullets([f"A: `{path_a}`", f"B: `{path_b}`"])
    doc.para(
        "Each configuration both sides measured, each side's value with its spread, and B/A (the range in "
        "brackets is what the spreads allow). The verdict names a change only where the spreads do not "
        "overlap and, for times, B/A is beyond the noise floor: two runs of the same command differ by up to "
        f"that much (docs/report.md, Noise; `--noise FACTOR` sets it). Every number: `{COMPARE_CSV}`."
    )
    for kind in dict.fromkeys(table["kind"]):
        doc.heading(2, kind.capitalize())
        part = table[table["kind"] == kind]
        counts = ", ".join(f"{n} {v}" for v, n in part["verdict"].value_counts().items())
        floor = part["noise_floor"].iloc[0]
        doc.para(counts + (f" (noise floor: {floor:.3g}x)" if kind != "accuracy" else ""))
        doc.table(shown(table, kind, names))
    png = plot(table, out / COMPARE_PNG, ("A", "B"))
    if png:
        doc.image(png, "B/A per configuration")
    else:
        (out / COMPARE_PNG).unlink(missing_ok=True)
    page = doc.html(title).encode()  # every file once the document is built: all of them or none
    results.atomic_write_bytes(out / COMPARE_CSV, table.to_csv(index=False).encode())
    results.atomic_write_bytes(out / COMPARE_HTML, page)
    return results.atomic_write_bytes(out / COMPARE_MD, doc.markdown().encode())
