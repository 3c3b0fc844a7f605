"""The summary tables a speed report opens with, as pandas.

- `headline_table`: per norm x pass, the best implementation at the largest input, its % of roofline
  and its speedup over native (from `report.speed_stats`, one row per configuration and impl);
- `step_table`: for model sweeps (`shape=model`), each model's training step per norm x impl, the
  norm layers' share of it, and its speedup from switching implementation (and from bn native);
- `wrapper_table`: normbench's module wrapper, timed on its own (pass `wrapper`), per norm.

Speed rows come in three kinds of `pass` (`split`): one layer's fwd/bwd/fwdbwd, a model's `step` and
the `wrapper`; only the first are memory-bound passes with a roofline.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd

from normbench.io import swept
from normbench.report.plots import _varying, impl_order, label, norm_order, rank

STEP, WRAPPER = "step", "wrapper"
# What a step is keyed by besides norm and impl; `input` keeps sources apart.
STEP_KEYS = ["input", "model", "batch_size", "shape", "dtype", "layout", "cuda_graph", "device", "device_name"]


def split(speed: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(layer passes, model steps, wrapper rows) of a frame of speed rows."""
    if "pass" not in speed:
        return speed, speed.iloc[0:0], speed.iloc[0:0]
    kind = speed["pass"].astype(str)
    return speed[~kind.isin([STEP, WRAPPER])], speed[kind == STEP].copy(), speed[kind == WRAPPER].copy()


def _elements(shape) -> float:
    dims = [int(d) for d in re.findall(r"\d+", str(shape))]
    return float(math.prod(dims)) if dims else math.nan


def _pct(v) -> str:
    return "" if pd.isna(v) else f"{v:.1f}"


def _x(v) -> str:
    return "" if pd.isna(v) else f"{v:.2f}x"


def _ms(v) -> str:
    return "" if pd.isna(v) else f"{v:.4g}"


def _order(frame: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    ranks = {"norm": norm_order(), "impl": impl_order()}
    return frame.sort_values(
        [c for c in cols if c in frame], key=lambda s: rank(s, ranks[s.name]) if s.name in ranks else s
    ).reset_index(drop=True)


def headline_table(stats: pd.DataFrame) -> pd.DataFrame:
    """Per norm x pass (and per dtype, layout, ... where those vary): at the largest input, the fastest
    implementation, its median, % of roofline and speedup over native at that same configuration."""
    if stats.empty:
        return pd.DataFrame()
    d = stats.assign(elements=stats["shape"].map(_elements) if "shape" in stats else stats["batch_size"])
    extra = _varying(d, ["input", "model", "dtype", "layout", "cuda_graph", "device_name"])
    groups = [
        c
        for c in ["input", "model", "norm", "pass", "dtype", "layout", "cuda_graph", "device_name"]
        if c in d and (c in ("norm", "pass") or c in extra)
    ] + stats.attrs.get("swept", [])  # keys the sweep varied beyond these (normbench.io.swept)
    picked = []
    for _, g in d.groupby(groups, dropna=False, sort=False):
        largest = g[g["elements"] == g["elements"].max()] if g["elements"].notna().any() else g
        picked.append(largest.loc[largest["median_ms"].astype(float).idxmin()])
    best = _order(pd.DataFrame(picked), ["input", "model", "norm", "pass", "dtype", "layout"])
    t = best[groups].copy()
    for c in groups:
        t[c] = t[c].map(label)
    if "shape" in best:
        t["largest input"] = best["shape"].map(label)
    t["best impl"] = best["impl"]
    t["median ms"] = best["median_ms"].map(_ms)
    t["% of roofline"] = best["pct_of_peak"].map(_pct) if "pct_of_peak" in best else ""
    t["speedup vs native"] = best["speedup_vs_native"].map(_x)
    return t.rename(columns={"device_name": "device"}).reset_index(drop=True)


def step_stats(steps: pd.DataFrame) -> pd.DataFrame:
    """Per model configuration x norm x impl: median step ms, the norm layers' ms and share, the speedup
    over native (same norm) and over bn native (same model, batch, dtype, ...); > 1 is faster."""
    keys = [k for k in STEP_KEYS if k in steps and steps[k].notna().any()]
    metrics = [m for m in ("median_ms", "norm_ms", "norm_share") if m in steps]
    d, swept_keys = swept.add(steps.copy(), keys + ["norm", "impl"])  # keys the sweep varied beyond these
    keys += swept_keys
    for k in keys:
        if k != "batch_size":
            d[k] = d[k].map(label)
    stats = d.groupby(keys + ["norm", "impl"], dropna=False)[metrics].median().reset_index()
    by = stats.set_index(keys + ["norm", "impl"])["median_ms"]

    def base(row, norm: str | None) -> float:
        key = tuple(row[k] for k in keys) + (norm or row["norm"], "native")
        return float(by.get(key, np.nan))

    stats["speedup_vs_native"] = [base(r, None) / r["median_ms"] for _, r in stats.iterrows()]
    stats["speedup_vs_bn_native"] = [base(r, "bn") / r["median_ms"] for _, r in stats.iterrows()]
    stats = _order(stats, keys + ["norm", "impl"])
    stats.attrs["swept"] = swept_keys
    return stats


def step_table(stats: pd.DataFrame) -> pd.DataFrame:
    """The step table as shown: what varies, then formatted times, share and speedups."""
    show = _varying(stats, ["input"]) + ["model", "batch_size"]
    show += _varying(stats, ["dtype", "layout", "cuda_graph", "device_name"]) + stats.attrs.get("swept", [])
    show += ["norm", "impl"]
    t = stats[[c for c in show if c in stats]].copy()
    t["batch_size"] = t["batch_size"].map(label)
    t["step ms"] = stats["median_ms"].map(_ms)
    if "norm_ms" in stats:
        t["norm layers ms"] = stats["norm_ms"].map(_ms)
        t["norm share %"] = stats["norm_share"].map(_pct)
    t["speedup vs native"] = stats["speedup_vs_native"].map(_x)
    if stats["speedup_vs_bn_native"].notna().any():
        t["speedup vs bn native"] = stats["speedup_vs_bn_native"].map(_x)
    return t.rename(columns={"batch_size": "batch", "device_name": "device"})


def wrapper_table(wrapper: pd.DataFrame, layers: pd.DataFrame) -> pd.DataFrame:
    """Per norm: the module wrapper's median cost per call, in us, and as a % of the fastest native fwd
    pass measured for that norm (the shape where the wrapper would weigh most)."""
    keys = [k for k in ("input", "norm", "device_name") if k in wrapper and wrapper[k].notna().any()]
    wrapper, extra = swept.add(wrapper, keys + ["impl"])  # keys the sweep varied beyond these
    keys += extra
    layers = layers.assign(**{k: swept.column(layers, k) for k in extra if k not in layers})
    t = wrapper.groupby(keys, dropna=False)["median_ms"].median().reset_index()
    native = layers[(layers.get("impl") == "native") & (layers.get("pass") == "fwd")] if not layers.empty else layers
    fastest = native.groupby(keys, dropna=False)["median_ms"].min() if not native.empty else pd.Series(dtype=float)
    ref = np.asarray(
        [fastest.get(tuple(r[k] for k in keys) if len(keys) > 1 else r[keys[0]], np.nan) for _, r in t.iterrows()],
        dtype=float,
    )
    out = _order(t.assign(ref=ref), keys)
    shown = out[keys].copy()
    if len(shown.get("input", pd.Series()).unique()) <= 1:
        shown = shown.drop(columns=["input"], errors="ignore")
    shown["wrapper us per call"] = (1e3 * out["median_ms"]).map(lambda v: f"{v:.2f}")
    shown["% of the fastest native fwd"] = (100 * out["median_ms"] / out["ref"]).map(_pct)
    return shown.rename(columns={"device_name": "device"}).reset_index(drop=True)
