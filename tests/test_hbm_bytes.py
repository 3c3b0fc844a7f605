"""kernels.hbm_bytes without a GPU: ncu's CSV read back, the cases planned, a fake ncu driven, the child's
pass run on the CPU. What ncu itself reports is only known on a GPU (docs/triton.md)."""

from __future__ import annotations

import csv
import json
import stat
import sys

import pytest
import torch

from normbench.tools import hbm_bytes
from normbench.tools.hbm_bytes import Case

# ncu --csv --print-units base: one row per kernel and metric, after the profiler's own messages
COLUMNS = ["ID", "Process ID", "Process Name", "Host Name", "Kernel Name", "Context", "Stream", "Block Size"]
COLUMNS += ["Grid Size", "Device", "CC", "Section Name", "Metric Name", "Metric Unit", "Metric Value"]


def ncu_row(kid: int, kernel: str, metric: str, unit: str, value: str) -> str:
    fields = [str(kid), "4242", "python3", "127.0.0.1", kernel, "1", "7", "(256, 1, 1)", "(528, 1, 1)", "0", "9.0"]
    return ",".join(f'"{v}"' for v in [*fields, "Command line profiler metrics", metric, unit, value])


NCU_CSV = "\n".join(
    [
        "==PROF== Connected to process 4242 (/usr/bin/python3)",
        '==PROF== Profiling "partial_moments": 0%....50%....100% - 1 pass',
        ",".join(f'"{c}"' for c in COLUMNS),
        ncu_row(0, "partial_moments", "dram__bytes_read.sum", "byte", "205,520,896"),
        ncu_row(0, "partial_moments", "dram__bytes_write.sum", "byte", "1,024"),
        ncu_row(0, "partial_moments", "gpu__time_duration.sum", "nsecond", "70,000"),
        ncu_row(1, "normalize", "dram__bytes_read.sum", "byte", "100000000"),
        ncu_row(1, "normalize", "dram__bytes_write.sum", "byte", "205520896"),
        ncu_row(1, "normalize", "gpu__time_duration.sum", "nsecond", "130000"),
        "==PROF== Disconnected from process 4242",
    ]
)

BN = Case("bn", "resnet_c64", "fp32", "contiguous", "triton", "auto", "fwd")


def test_ncu_csv_is_read_per_kernel_in_launch_order():
    kernels = hbm_bytes.parse_ncu_csv(NCU_CSV)
    assert [k.name for k in kernels] == ["partial_moments", "normalize"]
    assert (kernels[0].read, kernels[0].write, kernels[0].ns) == (205_520_896, 1024, 70_000)
    assert (kernels[1].read, kernels[1].write) == (100_000_000, 205_520_896)


def test_a_row_sets_the_measurement_beside_the_plan_and_the_model():
    sizes = hbm_bytes.plan(BN, 132, 50 * 2**20)  # the split path: x read twice, y written
    r = hbm_bytes.row(BN, sizes, hbm_bytes.parse_ncu_csv(NCU_CSV), "H100", "")
    assert r["planned_over_model"] == pytest.approx(1.5, abs=0.01)
    assert r["measured_mb"] == pytest.approx((205_520_896 + 1024 + 100_000_000 + 205_520_896) / 1e6)
    assert r["kernels"] == "partial_moments+normalize" and r["kernel_ms"] == pytest.approx(0.2)
    assert set(r) == set(hbm_bytes.FIELDS)


def test_cases_follow_the_filters():
    cases = hbm_bytes.default_cases()
    assert len(cases) == 2 * (2 * 2 * 3) + 2 * 2  # images: layouts x bn, gn x paths; rows: native, triton
    assert {c.norm for c in cases if c.shape.startswith("rows")} == {"ln"}
    assert not [c for c in cases if c.shape.startswith("rows") and c.path == "coop"]
    only = hbm_bytes.default_cases(["gn"], ["resnet_c64"], ["triton"])
    assert {(c.norm, c.impl) for c in only} == {("gn", "triton")} and len(only) == 2 * 2 * 2


def fake_ncu(tmp_path, body: str):
    path = tmp_path / "ncu"
    path.write_text(f"#!{sys.executable}\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_each_case_runs_under_ncu_with_its_flags_and_the_child_case(tmp_path):
    seen = tmp_path / "argv.json"
    ncu = fake_ncu(tmp_path, f"import json, sys\njson.dump(sys.argv[1:], open({str(seen)!r}, 'w'))\nprint({NCU_CSV!r})")
    kernels, error = hbm_bytes.measure(ncu, BN, timeout_s=60)
    assert error == "" and len(kernels) == 2
    argv = json.loads(seen.read_text())
    assert argv[: len(hbm_bytes.NCU_FLAGS)] == list(hbm_bytes.NCU_FLAGS)
    assert "--cache-control" in argv and argv[argv.index("--cache-control") + 1] == "none"
    assert Case(**json.loads(argv[argv.index("--child") + 1])) == BN


def test_a_failing_case_keeps_its_error_and_the_sweep_goes_on(tmp_path, monkeypatch):
    ncu = fake_ncu(tmp_path, "import sys\nprint('==PROF== ERROR: LibraryNotLoaded', file=sys.stderr)\nsys.exit(1)")
    kernels, error = hbm_bytes.measure(ncu, BN, timeout_s=60)
    assert kernels == [] and "rc 1" in error and "LibraryNotLoaded" in error
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a dry run: plans only
    out = tmp_path / "rows.csv"
    assert hbm_bytes.main([str(out), "--norm", "bn", "--shape", "resnet_c64", "--impl", "triton"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 2 * 2 * 2 and all(r["error"].startswith("dry run:") for r in rows)
    split = [r for r in rows if (r["layout"], r["path"], r["pass"]) == ("contiguous", "auto", "bwd")]
    assert float(split[0]["planned_over_model"]) == pytest.approx(5 / 3, abs=0.02)


@pytest.mark.parametrize("impl", ["native", "triton"])
@pytest.mark.parametrize("pass_", ["fwd", "bwd"])
def test_the_child_runs_the_pass_on_the_cpu(monkeypatch, impl, pass_):
    """The child's pass at a tiny shape (the profiler's window is CUDA's only; triton interpreted)."""
    if impl == "triton":
        pytest.importorskip("triton")
    monkeypatch.setattr(hbm_bytes, "shapes", lambda: {"tiny": (4, 64, 3, 5)})  # 32 groups of 2
    monkeypatch.setattr("normbench.bench.timing.FLUSH_BYTES", 4096)
    hbm_bytes.profiled_pass(Case("gn", "tiny", "fp32", "channels_last", impl, "auto", pass_), device="cpu")
