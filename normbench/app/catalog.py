"""What each app can sweep, read from the registry and conf/: `normbench-speed --list`,
`normbench-accuracy --list`, and the config groups each app's `--help` shows (conf/hydra/help/).

Both apps compose from one conf/, so `APP_GROUPS` says which groups each one uses, and a shared group's
file belongs to the app whose keys it sets (`app_of`); Hydra's own `$APP_CONFIG_GROUPS` would list every
group of conf/ for both.
Nothing here needs a GPU: what runs here is asked of the registry and the machine, never run.
"""

from __future__ import annotations

import importlib.resources
import re
import textwrap
from importlib.abc import Traversable
from pathlib import Path

from omegaconf import OmegaConf

from normbench.errors import UsageError

# Config groups per app. `sweep` is shared by name only: each app has its own sweeps, told apart by the
# keys they set (SHARED_BY_NAME). tests/test_cli.py checks that every option is in an app.
APP_GROUPS: dict[str, tuple[str, ...]] = {
    "speed": ("norm", "shape", "sweep"),
    "accuracy": ("norm", "dataset", "model", "sweep", "experiment", "claim_run"),
}
SHARED_BY_NAME = {"sweep"}
# Groups not in an app's defaults list are added with +group=option.
ADDED = {"experiment", "claim_run"}
WIDTH = 100


def conf_root(configs: str) -> Traversable:
    """The conf/ the apps compose from, given as Hydra's config_path (a directory or pkg://normbench.conf)."""
    if configs.startswith("pkg://"):
        return importlib.resources.files(configs.removeprefix("pkg://"))
    return Path(configs)


def options(configs: str, app: str, group: str) -> list[str]:
    """The options of `group` that `app` uses, as names for group=name."""
    folder = conf_root(configs) / group
    found = sorted(f.name.removesuffix(".yaml") for f in folder.iterdir() if f.name.endswith(".yaml"))
    if group not in SHARED_BY_NAME:
        return found
    return [o for o in found if app_of(configs, (folder / f"{o}.yaml").read_text(), f"conf/{group}/{o}.yaml") == app]


def own_keys(configs: str, app: str) -> set[str]:
    """The top-level keys and groups only `app` has: its primary config's and its groups, less the other's."""

    def keys(name: str) -> set[str]:
        return set(OmegaConf.create((conf_root(configs) / f"{name}.yaml").read_text())) | set(APP_GROUPS[name])

    return keys(app) - set().union(*(keys(other) for other in APP_GROUPS if other != app))


def app_of(configs: str, text: str, where: str) -> str:
    """The one app whose own keys a config file sets (its sweeper params and `override /group` defaults)."""
    cfg = OmegaConf.to_container(OmegaConf.create(text))
    params = cfg.get("hydra", {}).get("sweeper", {}).get("params") or {}
    keys = {str(k).lstrip("+~").split(".")[0] for k in params}
    keys |= {str(k).split()[-1].lstrip("/") for d in cfg.get("defaults", []) if isinstance(d, dict) for k in d}
    keys |= set(cfg) - {"hydra", "defaults"}
    apps = [app for app in APP_GROUPS if keys & own_keys(configs, app)]
    if len(apps) != 1:
        found = " and ".join(apps) or "no app"
        raise UsageError(f"{where} sets keys of {found}; a sweep must set a key only one app has: {sorted(keys)}")
    return apps[0]


def config_groups(configs: str, app: str) -> str:
    """The app's groups as Hydra's help lists them (`group: a, b, c`), for its help template."""
    lines = []
    for group in APP_GROUPS[app]:
        prefix = "+" if group in ADDED else ""
        lines.append(f"{prefix}{group}: {', '.join(options(configs, app, group))}")
    return "\n".join(lines)


def unsupported_here(norm: str, impl: str) -> str | None:
    """None when implementation `impl` of `norm` can run on this machine (its GPU if it has one, else
    the CPU), else why not: the support contract's answer (normbench.norms.supports)."""
    from normbench import norms
    from normbench.kernels import availability

    device = "cuda" if availability.cuda_available() else "cpu"
    return norms.supports(norm, impl, device=device, dtype=None)


def listing(configs: str, app: str) -> str:
    """What `app` can sweep: norms, implementations (and which run here), then its own groups."""
    import torch

    from normbench import norms

    here = "CUDA: " + torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA GPU (CPU only)"
    out = [
        f"normbench-{app}: what can be swept (key=value runs one job; -m key=a,b sweeps). This machine: {here}.",
        "",
        "norm=  (conf/norm/; options such as norm.groups=8 in each file)",
    ]
    out += _rows({name: _first_sentence(norms.norm_class(name).__doc__ or "") for name in norms.available()})
    out += ["", *_support_table(norms.available(), norms.all_implementations())]
    for group in APP_GROUPS[app]:
        if group == "norm":
            continue
        prefix = "+" if group in ADDED else ""
        folder = conf_root(configs) / group
        described = {o: _describe(group, (folder / f"{o}.yaml").read_text()) for o in options(configs, app, group)}
        out += ["", f"{prefix}{group}=  (conf/{group}/)", *_rows(described)]
    if app == "speed":
        from normbench.bench import speed

        out += [
            "",
            f"dtype=  {', '.join(speed.DTYPES)}",
            f"layout= {', '.join(speed.LAYOUTS)}",
            f"pass=   {', '.join(speed.PASSES)}, all",
        ]
    return "\n".join(out)


def _support_table(names: list[str], impls: list[str]) -> list[str]:
    """impl= per norm: yes (runs here), - (not implemented), no [n] (implemented, cannot run here)."""
    from normbench import norms

    reasons: list[str] = []
    pad = max(map(len, names)) + 2
    rows = [_cells("", impls, pad)]
    for name in names:
        cells = []
        for impl in impls:
            reason = unsupported_here(name, impl)
            if reason is None:
                cells.append("yes")
            elif impl not in norms.implementations(name):
                cells.append("-")
            else:
                if reason not in reasons:
                    reasons.append(reason)
                cells.append(f"no [{reasons.index(reason) + 1}]")
        rows.append(_cells(name, cells, pad))
    notes = [f"  [{i}] {reason}" for i, reason in enumerate(reasons, 1)]
    return ["impl=  per norm, here: yes runs, - not implemented, no [n] implemented but not here", *rows, *notes]


def _cells(name: str, cells: list[str], pad: int) -> str:
    return f"  {name:<{pad}}" + "".join(f"{c:<11}" for c in cells).rstrip()


def _rows(described: dict[str, str]) -> list[str]:
    """One line per name, the descriptions aligned and cut to WIDTH."""
    indent = 2 + max(map(len, described), default=0) + 2
    return [
        f"  {name:<{indent - 2}}" + textwrap.shorten(text, WIDTH - indent, placeholder=" ...")
        for name, text in described.items()
    ]


def _describe(group: str, text: str) -> str:
    """A group option in a line: its shape for shape/, else the first sentence of its leading comment."""
    sentence = _first_sentence(" ".join(_leading_comment(text)))
    if group != "shape":
        return sentence
    cfg = OmegaConf.create(text)
    node = cfg.get("speed", cfg)  # shape/*.yaml is @package speed, shape/model.yaml is _global_
    if cfg.get("shape") is not None:
        model = str(cfg.shape.model._target_).rsplit(".", 1)[-1]
        return f"{model}'s norm layers, batch {node.batch_size}: {sentence}"
    dims = ", ".join(str(d) for d in [node.batch_size, node.channels, *node.spatial])
    return f"({dims}): {sentence}"


def _leading_comment(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        if not line.startswith("# @package"):
            lines.append(line.lstrip("#").strip())
    return lines


def _first_sentence(text: str) -> str:
    text = " ".join(text.split())
    end = re.search(r"\.(\s+[A-Z(]|$)", text)  # not at "Sec. 5.1" or "e.g. x"
    return text[: end.start() + 1] if end else text
