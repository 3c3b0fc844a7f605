"""`python -m normbench.app.selfcheck`: run for real on the CPU (rows written, device = wall, nothing
enforced), its checks on rows made to pass and fail them, and the GPU branch's exit codes."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from normbench.app import selfcheck
from normbench.bench import speed
from normbench.io import results


def test_cpu_run_writes_rows_with_all_clocks_and_exits_0(tmp_path, capsys):
    rc = selfcheck.main(["--out", str(tmp_path), "--device", "cpu", "speed.min_run_time=0.01", "speed.min_repeats=3"])
    assert rc == 0
    rows = pd.read_csv(tmp_path / "rows.csv")
    shapes = ["x".join(map(str, s)) for s in selfcheck.SHAPES["cpu"]]
    assert rows["pass"].tolist() == ["copy"] + ["fwd", "bwd", "fwdbwd"] * len(shapes)
    assert rows["shape"].tolist()[1:] == [s for s in shapes for _ in range(3)]
    assert (rows.device_ms == rows.wall_ms).all() and (rows.device_clock == "wall").all()
    assert (rows.bound == "device").all() and (rows.device_p20_ms <= rows.device_p80_ms).all()
    copy = rows.iloc[0]
    assert copy.gbps == pytest.approx(copy.bytes / (copy.device_ms * 1e-3) / 1e9)
    assert (rows.peak_gbps == copy.gbps).all()  # the LayerNorm's roofline is the copy's
    assert copy.bytes == 2 * selfcheck.COPY_MIB["cpu"] * 2**20
    frame = results.read_sweep(tmp_path)
    assert (frame.status == "ok").all() and (frame.median_ms == frame.device_ms).all()
    out = capsys.readouterr().out
    assert "ln fwdbwd" in out and ("all checks pass" in out or "not enforced" in out)


def _rows(fwd=0.1, bwd=0.2, fwdbwd=0.3, spread=1.01):
    return [
        {"norm": "ln", "pass": p, "shape": "8x8", "device_ms": t, "device_p20_ms": t, "device_p80_ms": t * spread}
        | {"device_clock": "graph", "wall_ms": t, "bound": "device"}
        for p, t in (("fwd", fwd), ("bwd", bwd), ("fwdbwd", fwdbwd))
    ]


def test_checks_hold_rows_of_50_us_and_more_to_the_spread_and_fwdbwd_to_the_sum():
    assert selfcheck.problems(_rows()) == []
    wide = selfcheck.problems(_rows(spread=1.05))
    assert len(wide) == 3 and "p80/p20 = 1.050 > 1.03" in wide[0]
    assert selfcheck.problems(_rows(0.01, 0.02, 0.03, spread=1.5)) == []  # under 50 us: not held to it
    (off,) = selfcheck.problems(_rows(fwdbwd=0.36))
    assert "1.200x fwd + bwd" in off
    assert selfcheck.problems(_rows(0.01, 0.02, 0.04)) == []  # a launch-bound shape: printed, not held
    assert selfcheck.problems(_rows(fwdbwd=0.31)) == []  # within 5%
    skipped = [{"norm": "ln", "pass": "bwd", "shape": "8x8", "status": "skipped", "error": "capture failed"}]
    assert selfcheck.problems(skipped) == ["ln bwd 8x8 was not measured: capture failed"]


@pytest.mark.parametrize("fwdbwd, code", [(0.3, 0), (0.4, 1)])
def test_on_a_gpu_a_failed_check_exits_1(tmp_path, monkeypatch, capsys, fwdbwd, code):
    # The GPU branch only: the device is said to be CUDA and the rows are given, not measured.
    monkeypatch.setattr(selfcheck, "resolve_device", lambda name: torch.device("cuda"))
    monkeypatch.setattr(selfcheck, "measure", lambda cfg, device: _rows(fwdbwd=fwdbwd))
    monkeypatch.setattr(speed, "free_memory", lambda device: 80 * 2**30)  # an H100's, not asked of CUDA
    assert selfcheck.main(["--out", str(tmp_path)]) == code
    err = capsys.readouterr().err
    assert ("self-check FAILED: 1 check(s) on cuda" in err) == bool(code)
    assert (tmp_path / "rows.csv").is_file()  # written either way


@pytest.mark.parametrize(
    "override, start",
    [
        ("speed.l2=lukewarm", "expected one of [cold, warm] (key speed.l2)"),
        ("speed.sundial=1", "Key 'sundial' not in 'SpeedSettings' (key speed.sundial)"),
    ],
)
def test_bad_override_is_one_line(tmp_path, capsys, override, start):
    assert selfcheck.main(["--out", str(tmp_path), "--device", "cpu", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: bad override") and start in err and "\n" not in err
    assert not (tmp_path / "rows.csv").exists()
