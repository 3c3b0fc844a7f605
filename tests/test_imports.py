"""Importing normbench changes no global state: every module of the package is imported in a fresh
interpreter, and torch's compiler configs, torch's defaults and matplotlib's backend and rcParams read
the same before and after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import normbench

PROBE = r"""
import json, pkgutil, importlib, sys
import torch
import torch._dynamo.config, torch._functorch.config, torch._inductor.config
import matplotlib

def state():
    configs = {
        name: {k: repr(v) for k, v in module.get_config_copy().items()}
        for name, module in [
            ("functorch", torch._functorch.config),
            ("dynamo", torch._dynamo.config),
            ("inductor", torch._inductor.config),
        ]
    }
    torch_defaults = {
        "default_dtype": str(torch.get_default_dtype()),
        "num_threads": torch.get_num_threads(),
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "grad": torch.is_grad_enabled(),
        "anomaly": torch.is_anomaly_enabled(),
        "matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn": [torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic],
        "rng": torch.random.get_rng_state().sum().item(),
    }
    # dict's own lookup: RcParams' resolves the "auto" backend, which would itself be a change.
    rc = {k: repr(dict.__getitem__(matplotlib.rcParams, k)) for k in dict.keys(matplotlib.rcParams)}
    return {"configs": configs, "torch": torch_defaults, "rcParams": rc}

before = state()
import normbench
names = [m.name for m in pkgutil.walk_packages(normbench.__path__, "normbench.")]
for name in names:
    importlib.import_module(name)
after = state()
print(json.dumps({"names": names, "before": before, "after": after}))
"""


def test_importing_every_module_changes_no_global_state(tmp_path):
    root = Path(normbench.__file__).resolve().parent.parent
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "DISPLAY", "WAYLAND_DISPLAY")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root), env.get("PYTHONPATH")]))
    env["MPLCONFIGDIR"] = str(tmp_path)  # no user matplotlibrc
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert {"normbench.norms", "normbench.bench.speed", "normbench.report.document", "normbench.report.plots"} <= set(
        result["names"]
    )
    before, after = result["before"], result["after"]
    for name in before["configs"]:
        changed = {k for k in before["configs"][name] if before["configs"][name][k] != after["configs"][name].get(k)}
        assert not changed, f"importing normbench changed torch {name} config: {sorted(changed)}"
    assert after["torch"] == before["torch"]
    changed = {k for k in before["rcParams"] if before["rcParams"][k] != after["rcParams"][k]}
    assert not changed, f"importing normbench changed matplotlib rcParams: {sorted(changed)}"
