import importlib.util
import os
import sys
from pathlib import Path

import torch
from hypothesis import settings

import normbench

# Fuzzed tests draw the same examples on every run (CI stays deterministic: an ill-conditioned draw that
# a test's tolerance misjudges shows up where the change that causes it is made, not at random later).
# HYPOTHESIS_PROFILE=explore draws new ones, to search further.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# Triton reads TRITON_INTERPRET when a kernel is defined, so it must be set before anything imports
# triton: without a GPU, impl=triton then runs its kernels on the CPU through the interpreter.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The tests compose configs from the package `normbench.conf`. An editable install of another
# checkout maps that name to its conf/, so with PYTHONPATH=this checkout the code would be this one's
# and the configs another's. Load this checkout's conf/ under that name, as the apps find it
# (normbench.app.cli._configs).
_CONF = Path(__file__).resolve().parent.parent / "conf"
if (_CONF / "__init__.py").is_file() and Path(normbench.__file__).resolve().parent.parent == _CONF.parent:
    _spec = importlib.util.spec_from_file_location(
        "normbench.conf", _CONF / "__init__.py", submodule_search_locations=[str(_CONF)]
    )
    _module = importlib.util.module_from_spec(_spec)
    sys.modules["normbench.conf"] = _module
    _spec.loader.exec_module(_module)
    normbench.conf = _module
