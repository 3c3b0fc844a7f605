"""The keys a sweep varies, read from its jobs' overrides, so that no table pools two configurations.

A table groups rows by the columns it knows (norm, impl, batch size, shape, ...). A sweep may vary a key
those columns do not show (`norm.groups=1,32`, `accuracy.lr_reference.lr=0.01,0.5`, `speed.threads=1,2`):
grouping would then average different configurations into one cell. `add` finds every such key in the
rows' `overrides` column (what each job's `.hydra/overrides.yaml` recorded) and makes it a column of its
own, named as the override (`norm.groups`), so the table keeps its values apart.

`seed` is the one override kept out: it is the replicate a table's mean ± sd is taken over.
"""

from __future__ import annotations

import pandas as pd

REPLICATES = {"seed"}


def parse(overrides) -> dict[str, str]:
    """`"norm=gn norm.groups=32 +x=1"` -> {"norm": "gn", "norm.groups": "32", "x": "1"} (`~key` deletions
    and words without `=` are left out)."""
    out = {}
    for word in str(overrides or "").split() if not _na(overrides) else []:
        key, eq, value = word.partition("=")
        if eq and not key.startswith("~"):
            out[key.lstrip("+")] = value
    return out


def _na(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def swept_keys(frame: pd.DataFrame) -> list[str]:
    """The override keys (besides `seed`) that take more than one value among the rows of one input."""
    if frame.empty or "overrides" not in frame:
        return []
    parsed = frame["overrides"].map(parse)
    inputs = frame["input"].astype(str) if "input" in frame else pd.Series("", index=frame.index)
    keys: dict[str, None] = {}
    for _, rows in parsed.groupby(inputs):
        table = pd.DataFrame(list(rows))
        for key in table.columns:
            if key not in REPLICATES and table[key].fillna("").nunique() > 1:
                keys[key] = None
    return sorted(keys)


def column(frame: pd.DataFrame, key: str) -> pd.Series:
    """The values of override `key` per row, as text ("" where a row's job did not set it)."""
    if key in frame:
        values = frame[key]
    elif "overrides" in frame:
        values = frame["overrides"].map(lambda o: parse(o).get(key, ""))
    else:
        values = pd.Series("", index=frame.index)
    return values.map(lambda v: "" if _na(v) else str(v))


def add(frame: pd.DataFrame, keys: list[str]) -> tuple[pd.DataFrame, list[str]]:
    """`frame` with a column per swept key that grouping by `keys` would pool (its values differ within
    one group), and the names of those columns (to group and show by). A key already a column of
    `frame` is that column."""
    keys = [k for k in keys if k in frame]
    extra: list[str] = []
    if frame.empty:
        return frame, extra
    for key in swept_keys(frame):
        values = column(frame, key)
        groups = [frame[k].astype(str).fillna("") for k in keys + extra]
        pooled = values.groupby(groups).nunique().gt(1).any() if groups else values.nunique() > 1
        if pooled:
            frame = frame if key in frame else frame.assign(**{key: values})
            extra.append(key)
    return frame, extra
