"""Issue 26's hostile inputs on the results side: nothing lost, overwritten, pooled or silently wrong."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import test_integrity
from test_results import accuracy_rows, accuracy_sweep, make_sweep, speed_rows, speed_sweep

from normbench.app import cli
from normbench.io import results, swept
from normbench.report import compare, speed_tables
from normbench.report import document as report

# ------------------------------------------------------------------------------- swept keys stay apart


def threads_sweep(root: Path, medians: dict[int, float], extra: list[str] = ()) -> Path:
    """`normbench-speed -m speed.threads=1,2`: one norm, impl and pass, a median per thread count."""
    jobs = []
    for threads, ms in medians.items():
        row = speed_rows("gn", "native", "fwd", 8)[0] | {"median_ms": ms, "p20_ms": ms * 0.98, "p80_ms": ms * 1.02}
        row["threads"] = threads
        jobs.append(([f"speed.threads={threads}", *extra], [row]))
    return make_sweep(root, "speed", jobs)


def groups_lr_sweep(root: Path) -> Path:
    """`normbench-accuracy -m norm=gn norm.groups=1,32 accuracy.lr_reference.lr=0.01,0.5`, one seed."""
    jobs = []
    for groups in (1, 32):
        for lr in (0.01, 0.5):
            row = accuracy_rows("gn", 32, 0)[0] | {"test_acc": 0.5 + groups / 100 + lr / 10, "lr": lr}
            jobs.append((["norm=gn", f"norm.groups={groups}", f"accuracy.lr_reference.lr={lr}"], [row]))
    return make_sweep(root, "accuracy", jobs)


def test_parse_overrides():
    assert swept.parse("norm=gn +x.y=1 ~z seed=2 word") == {"norm": "gn", "x.y": "1", "seed": "2"}
    assert swept.parse(float("nan")) == {} and swept.parse(None) == {}


def test_speed_medians_of_a_swept_key_are_not_averaged(tmp_path):
    speed = report.ok_rows(results.read([threads_sweep(tmp_path / "s", {1: 0.118, 2: 0.070})]), "speed")
    stats = report.speed_stats(speed)
    assert sorted(stats["median_ms"]) == [0.070, 0.118]  # not one 0.094 row
    table = report.speed_table(stats)
    assert dict(zip(table["speed.threads"], table["median ms"])) == {"1": "0.118", "2": "0.07"}
    head = speed_tables.headline_table(stats)
    assert sorted(head["speed.threads"]) == ["1", "2"] and len(head) == 2


def test_a_key_the_tables_show_adds_no_column(tmp_path):
    """`norm=bn,gn` or `speed.batch_size=4,16` are columns already: nothing is added."""
    speed = report.ok_rows(results.read([speed_sweep(tmp_path / "s")]), "speed")
    assert swept.swept_keys(speed) == ["impl", "norm", "speed.batch_size"]
    assert report.speed_stats(speed).attrs["swept"] == []


def test_accuracy_configurations_of_a_swept_key_are_not_pooled(tmp_path):
    out = tmp_path / "s"
    md = report.build_report([groups_lr_sweep(out)], out).read_text()
    assert "±" not in md.split("## Accuracy")[1].split("##")[0].replace("mean ± sd", "")  # one seed: no spread
    for groups in (1, 32):
        for lr in (0.01, 0.5):
            heading = f"### accuracy.lr_reference.lr = {lr}, norm.groups = {groups}"
            assert heading in md, heading
            error = 100 * (1 - (0.5 + groups / 100 + lr / 10))
            assert f"| {error:.2f} " in md.split(heading)[1].split("###")[0]
    assert md.count("one seed, so no spread") == 4  # a headline per configuration, each of one run


def test_compare_keeps_a_swept_key_apart(tmp_path):
    a = threads_sweep(tmp_path / "a", {1: 0.118, 2: 0.070})
    b = threads_sweep(tmp_path / "b", {1: 0.120, 2: 0.035})
    table = compare.compare(a, b, noise=1.5)
    by = table.set_index("speed.threads")
    assert by.loc["1", "value_a"] == pytest.approx(0.118) and by.loc["2", "value_b"] == pytest.approx(0.035)
    assert by.loc["2", "verdict"] == "B faster"
    shown = compare.shown(table, "speed", ("A", "B"))
    assert "speed.threads" in shown.columns and len(shown) == 2


def test_compare_accuracy_against_speed_is_one_line(tmp_path):
    with pytest.raises(ValueError, match="same kind"):
        compare.compare(accuracy_sweep(tmp_path / "a"), speed_sweep(tmp_path / "s"))


def test_step_stats_keep_a_swept_key_apart(tmp_path):
    rows = []
    for threads, ms in ((1, 3.0), (2, 2.0)):
        rows.append(
            {"kind": "speed", "status": "ok", "input": "s", "norm": "bn", "impl": "native", "pass": "step"}
            | {"model": "resnet20", "batch_size": 8, "median_ms": ms, "overrides": f"speed.threads={threads}"}
        )
    stats = speed_tables.step_stats(pd.DataFrame(rows))
    assert sorted(stats["median_ms"]) == [2.0, 3.0]
    assert "speed.threads" in speed_tables.step_table(stats)


# --------------------------------------------------------------------- a report never replaces another


def test_report_out_into_another_sweep_is_refused(tmp_path, capsys):
    a, b = speed_sweep(tmp_path / "A"), accuracy_sweep(tmp_path / "B")
    assert cli.report([str(b)]) == 0
    before = {name: (b / name).read_bytes() for name in ("report.md", "summary.csv")}
    assert cli.report([str(a), "--out", str(b)]) == 2
    err = capsys.readouterr().err
    assert "another sweep's directory" in err and "--out" in err and f"normbench-report {b}" not in err
    assert {name: (b / name).read_bytes() for name in before} == before
    assert cli.report([str(b)]) == 0  # B's own report still rebuilds in place


def test_report_out_holding_another_report_is_refused(tmp_path):
    a, b, out = speed_sweep(tmp_path / "A"), accuracy_sweep(tmp_path / "B"), tmp_path / "out"
    frame_a, frame_b = results.read([a]), results.read([b])
    results.write_summary(frame_a, out)  # a report of A, as `normbench-report A --out out` leaves it
    report.check_out([a], out, frame_a)  # A again: a rebuild of the same report
    report.check_out([out], out, results.read([out]))  # the report directory as its own input
    with pytest.raises(ValueError, match="holds the report of other inputs"):
        report.check_out([b], out, frame_b)
    (out / "summary.csv").unlink()
    (out / "report.md").write_text("# someone's report\n")
    with pytest.raises(ValueError, match="holds a report.*of unknown inputs"):
        report.check_out([b], out, frame_b)
    with pytest.raises(ValueError, match="is a file, not a directory"):
        report.check_out([b], out / "report.md", frame_b)


def test_a_rebuild_that_would_shrink_does_not_suggest_itself(tmp_path, capsys):
    a = speed_sweep(tmp_path / "A")
    results.write_summary(results.read([a]), a)  # its report's summary, as the sweep's end left it
    shutil.rmtree(a / "0")
    assert cli.report([str(a)]) == 2
    err = capsys.readouterr().err
    assert "would lose" in err and f"`normbench-report {a}`" not in err and "--out NEW_DIR" in err


# ------------------------------------------------------------------- a single run owns hydra.run.dir


toy = test_integrity.toy  # the fixture: a Hydra app of test_launchers' in tmp_path


def toy_run(toy: Path, *args: str):
    import sys

    from test_launchers import run

    return run([sys.executable, "app.py", *args], cwd=toy)


def test_a_second_run_into_one_dir_is_refused(toy):
    first = toy_run(toy, "hydra.run.dir=D", "x=1")
    assert first.returncode == 0, first.stderr
    rows = (toy / "D" / "rows.csv").read_bytes()
    second = toy_run(toy, "hydra.run.dir=D", "x=3")
    assert second.returncode == 2
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "already holds results (rows.csv)" in lines[0] and "fresh hydra.run.dir" in lines[0]
    assert (toy / "D" / "rows.csv").read_bytes() == rows


def test_a_run_into_a_sweeps_job_dir_is_refused(tmp_path):
    from normbench.app.callbacks import SweepDirTaken, claim_run_dir

    sweep = accuracy_sweep(tmp_path / "acc")
    with pytest.raises(SweepDirTaken, match="rows.csv"):
        claim_run_dir(sweep / "0", "normbench-speed")
    with pytest.raises(SweepDirTaken, match="multirun.yaml"):
        claim_run_dir(sweep, "normbench-speed")


def test_a_planted_log_link_is_not_followed(toy):
    (toy / "D" / ".hydra").mkdir(parents=True)
    outside = toy / "outside.txt"
    outside.write_text("not the run's\n")
    for name in ("app.log", ".hydra/config.yaml", "peak_bandwidth.json.lock"):
        (toy / "D" / name).symlink_to(outside)
    done = toy_run(toy, "hydra.run.dir=D")
    assert done.returncode == 0, done.stderr
    assert outside.read_text() == "not the run's\n"
    assert not (toy / "D" / "app.log").is_symlink() and "wrote 1 row" in (toy / "D" / "app.log").read_text()
    assert "x: 1" in (toy / "D" / ".hydra" / "config.yaml").read_text()
    assert done.stderr.count("removed the symbolic link") == 3


# ---------------------------------------------------------------------------------- the peak cache


def peak_key(copy_mb: int = 8) -> str:
    import torch

    return f"cpu [cpu] {copy_mb}MiB {torch.get_num_threads()} threads"


@pytest.mark.parametrize(
    "planted",
    [
        {"peak_gbps": 0.001, "peak_method": "copy", "peak_copy_ms": 2 * 8 * 2**20 / 1e6},  # consistent, implausible
        {"peak_gbps": 0.001, "peak_method": "copy", "peak_copy_ms": 1.0},  # not what its copy time gives
        {"peak_gbps": 50.0, "peak_method": "copy", "peak_copy_ms": 2 * 8 * 2**20 / 50e6, "bytes": 1},  # a new key
        {"peak_gbps": float("inf"), "peak_method": "copy", "peak_copy_ms": 0.0},
        {"peak_gbps": True, "peak_method": "copy", "peak_copy_ms": 1.0},
    ],
)
def test_a_planted_peak_is_measured_again(tmp_path, monkeypatch, planted):
    import json

    import torch
    from test_integrity import copy_record

    from normbench.bench import timing

    (tmp_path / timing.PEAK_FILE).write_text(json.dumps({peak_key(): planted}))
    monkeypatch.setattr(timing, "_PEAKS", {})
    monkeypatch.setattr(timing, "measure_copy_bandwidth", lambda *a, **k: copy_record(12.5, 8))
    assert timing.peak_bandwidth(torch.device("cpu"), "cpu", tmp_path, 8)["peak_gbps"] == 12.5
    good = copy_record(40.0, 8)
    (tmp_path / timing.PEAK_FILE).write_text(json.dumps({peak_key(): good}))
    monkeypatch.setattr(timing, "_PEAKS", {})
    assert timing.peak_bandwidth(torch.device("cpu"), "cpu", tmp_path, 8) == good  # a measured one is reused


def test_a_lock_file_that_is_a_symlink_loop_is_replaced(tmp_path, monkeypatch):
    import torch
    from test_integrity import copy_record

    from normbench.bench import timing

    lock = tmp_path / (timing.PEAK_FILE + ".lock")
    lock.symlink_to(lock)  # ELOOP on open
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / (timing.PEAK_FILE + ".lock")).symlink_to(outside)  # would be truncated
    monkeypatch.setattr(timing, "_PEAKS", {})
    monkeypatch.setattr(timing, "measure_copy_bandwidth", lambda *a, **k: copy_record(12.5, 8))
    for where in (tmp_path, tmp_path / "sub"):
        assert timing.peak_bandwidth(torch.device("cpu"), "cpu", where, 8)["peak_gbps"] == 12.5
    assert outside.read_text() == "keep" and not lock.is_symlink()


# ---------------------------------------------------------------- hostile pytest-benchmark JSON, run.json


def bench_file(tmp_path: Path, name: str, content) -> Path:
    import json

    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def entry(median=0.001, **fields) -> dict:
    return {"name": "test_x", "fullname": "t.py::test_x", "stats": {"median": median, "rounds": 3}} | fields


@pytest.mark.parametrize(
    "content, says",
    [
        ('{"benchmarks": [{"name": "test_x", "stats": {"med', "not valid JSON (cut short?)"),
        ("hello", "not valid JSON"),
        (b"\x89PNG\r\n\x1a\n\xff\xfe", "not UTF-8 text"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ({"benchmarks": [entry(-0.001)]}, "stats.median -0.001"),
        ({"benchmarks": [entry(True)]}, "stats.median True"),
        ('{"benchmarks": [{"name": "test_x", "stats": {"median": NaN}}]}', "stats.median nan"),
        ({"benchmarks": [entry(extra_info=[1, 2])]}, "extra_info of type list"),
        ({"benchmarks": [entry(params="abc")]}, "params of type str"),
        ({"benchmarks": [entry()], "machine_info": ["x"]}, "machine_info is a list"),
        ({"benchmarks": [entry()], "commit_info": 3}, "commit_info is a int"),
        ({"benchmarks": ["test_x"]}, "a benchmark entry is a str"),
    ],
)
def test_a_hostile_benchmark_json_is_one_line_naming_the_file(tmp_path, capsys, content, says):
    path = bench_file(tmp_path, "bench.json", content)
    assert cli.report([str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and says in err, err
    assert not (tmp_path / "out" / "summary.csv").exists()


def test_other_stats_of_a_wrong_type_are_left_out(tmp_path):
    from normbench.io import benchmark_json

    stats = {"median": 0.002, "q1": True, "q3": -1, "min": "x", "rounds": 2.5, "iterations": False}
    path = bench_file(tmp_path, "b.json", {"benchmarks": [entry() | {"stats": stats}]})
    frame = benchmark_json.read_benchmark_json(path)
    assert frame["median_ms"].item() == 2.0
    for col in ("q1_ms", "q3_ms", "min_ms", "rounds", "iterations"):  # not 1000 ms, -1000 ms, 2.5 rounds
        assert col not in frame or frame[col].isna().all(), col


@pytest.mark.parametrize("run_json", ["[1, 2]", '{"command": 5, "versions": "abc", "jobs": [1, 2], "name": 3}', "{"])
def test_a_malformed_run_json_gives_summary_and_report(tmp_path, run_json):
    sweep = accuracy_sweep(tmp_path / "acc")
    (sweep / "run.json").write_text(run_json)
    assert cli.report([str(sweep)]) == 0
    md = (sweep / "report.md").read_text()
    assert (sweep / "summary.csv").is_file() and "### `acc`" in md and "versions: not recorded" in md


def test_a_report_that_fails_writes_neither_summary_nor_report(tmp_path, monkeypatch):
    sweep = accuracy_sweep(tmp_path / "acc")

    def broken(*args, **kwargs):
        raise RuntimeError("the document could not be built")

    monkeypatch.setattr(report.Document, "html", broken)
    with pytest.raises(RuntimeError):
        report.build_report([sweep], sweep)
    assert not (sweep / "summary.csv").exists() and not (sweep / "report.md").exists()


# --------------------------------------------------------------------------- the noise floor of --compare


def test_the_noise_floor_grows_with_the_runs_spreads(tmp_path, capsys):
    """A 3x change is named between runs whose p20-p80 is +-2%, and within noise between runs as noisy
    as the A/A of docs/report.md (+-25%: a busy machine); --noise sets the floor instead."""

    def sweep(name: str, medians: dict, spread: float) -> Path:
        jobs = []
        for threads, ms in medians.items():
            row = speed_rows("gn", "native", "fwd", 8)[0] | {"median_ms": ms, "threads": threads}
            row |= {"p20_ms": ms * (1 - spread), "p80_ms": ms * (1 + spread)}
            jobs.append(([f"speed.threads={threads}"], [row]))
        return make_sweep(tmp_path / name, "speed", jobs)

    quiet = compare.compare(sweep("a", {1: 0.1, 2: 0.1}, 0.02), sweep("b", {1: 0.3, 2: 0.1 / 3}, 0.02))
    assert quiet["noise_floor"].iloc[0] == pytest.approx(np.exp(compare.NOISE_K * np.log(1.02 / 0.98)))
    assert list(quiet.sort_values("speed.threads")["verdict"]) == ["B slower", "B faster"]
    a, b = sweep("c", {1: 0.1, 2: 0.1}, 0.25), sweep("d", {1: 0.3, 2: 0.1 / 3}, 0.25)
    busy = compare.compare(a, b)
    assert busy["noise_floor"].iloc[0] > 3 and (busy["verdict"] == "within noise").all()
    assert list(compare.compare(a, b, noise=2.0).sort_values("speed.threads")["verdict"]) == ["B slower", "B faster"]
    with pytest.raises(SystemExit) as stop:  # argparse: its usage, then the one line
        cli.report(["--compare", str(a), str(b), "--noise", "0.5"])
    assert stop.value.code == 2 and "--noise: must be a factor >= 1" in capsys.readouterr().err


def test_claims_are_not_judged_over_a_pooled_key(tmp_path, monkeypatch):
    from normbench.report import claims

    def judge(acc):
        raise AssertionError("judged over pooled configurations")

    monkeypatch.setattr(claims, "available", lambda acc: True)  # the claims' runs, as far as norm and K go
    monkeypatch.setattr(claims, "judge", judge)
    sweep = groups_lr_sweep(tmp_path / "s")
    md = report.build_report([sweep], sweep).read_text()
    assert "Not judged: this sweep varies `accuracy.lr_reference.lr`, `norm.groups`" in md


def test_entries_that_are_not_one_norms_pass_are_benchmarks_of_their_own(tmp_path):
    """extra_info naming a norm by a number, or no batch size (no shape to read it from): an entry of
    its own in "Other benchmarks", not a speed row that every speed table would trip on."""
    entries = [
        entry(extra_info={"norm": "bn", "impl": "native", "pass": "fwd"}),  # no batch size
        entry(extra_info={"norm": 5, "impl": None, "pass": "fwd", "bytes": "abc", "peak_gbps": -1}),
        entry(extra_info={"norm": "gn", "impl": "native", "pass": "fwd", "shape": "(4, 64, 8, 8)"}),
    ]
    path = bench_file(tmp_path, "b.json", {"benchmarks": entries, "commit_info": {"id": 7, "dirty": True}})
    assert cli.report([str(path), "--out", str(tmp_path / "out")]) == 0
    frame = results.read_summary(tmp_path / "out" / "summary.csv")
    assert list(frame["kind"]) == ["benchmark", "benchmark", "speed"] and frame["batch_size"].iloc[2] == 4
    assert "git commit: `7+dirty`" in (tmp_path / "out" / "report.md").read_text()


def test_wrapper_table_keeps_a_swept_key_apart():
    """The wrapper's cost per thread count, each against the native fwd of its own thread count."""
    layers, wrappers = [], []
    for threads, fwd_ms, wrapper_ms in ((1, 1.0, 0.005), (2, 0.5, 0.010)):
        over = {"overrides": f"norm=bn impl=native speed.threads={threads}"}
        layers.append(speed_rows("bn", "native", "fwd", 4)[0] | {"median_ms": fwd_ms} | over)
        wrappers.append({"norm": "bn", "impl": "native", "pass": "wrapper", "median_ms": wrapper_ms} | over)
    table = speed_tables.wrapper_table(pd.DataFrame(wrappers), pd.DataFrame(layers))
    assert table[["speed.threads", "wrapper us per call", "% of the fastest native fwd"]].values.tolist() == [
        ["1", "5.00", "0.5"],
        ["2", "10.00", "2.0"],
    ]
