"""The offline CLI as a user runs it: a real process, stdout JSON, one-line errors."""

import json
import subprocess
import sys

import numpy as np
import pytest

from racer_online.core import entry_levels, oracle_threshold, required_thresholds
from racer_online.records import Records, write_records


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "racer_online", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def records_file(tmp_path):
    rng = np.random.default_rng(7)
    scores = rng.uniform(size=(400, 3))
    labels = (rng.uniform(size=(400, 3)) < scores).astype(float)
    labels[:5, 1] = np.nan  # five records with an ungraded model
    records = Records(
        query_ids=tuple(f"q{i}" for i in range(400)),
        models=("a", "b", "c"),
        scores=scores,
        labels=labels,
        p_abstain=rng.uniform(size=400),
        costs=np.tile([0.1, 0.2, 0.9], (400, 1)),
    )
    path = tmp_path / "records.csv"
    write_records(path, records)
    return path, records.fully_graded()


@pytest.mark.parametrize(
    ("rule", "miss", "bound"),
    [
        ("cumulative", "answerable", "binomial"),
        ("threshold", "augmented", "hb"),
        ("cost", "augmented", "crc"),
    ],
)
def test_calibrate_json_agrees_with_the_method(records_file, rule, miss, bound):
    path, graded = records_file
    proc = run(
        "calibrate",
        "--records",
        str(path),
        "--alpha",
        "0.1",
        "--delta",
        "0.1",
        "--rule",
        rule,
        "--miss",
        miss,
        "--bound",
        bound,
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert "left out 5 records with an ungraded model" in proc.stderr
    # The written file rounds scores to 6 digits: recompute from what was written.
    levels = entry_levels(
        np.round(graded.scores, 6),
        rule=rule,
        miss=miss,
        p_abstain=np.round(graded.p_abstain, 6),
        prices=graded.costs,
    )
    t = required_thresholds(levels, graded.labels.astype(bool), miss=miss)
    assert report["n"] == 395
    assert report["lam_hat"] == pytest.approx(
        oracle_threshold(t, alpha=0.1, delta=0.1, bound=bound)
    )
    assert report["empirical_risk"] == pytest.approx(np.mean(t > report["lam_hat"]))
    assert report["certified"] and not report["fallback"]
    assert set(report) >= {"m_star", "mean_set_size", "abstain_rate", "mean_cost"}


def test_calibrate_reports_the_fallback_and_exits_zero(tmp_path):
    path = tmp_path / "few.csv"
    path.write_text("query_id,p:a,y:a\n" + "".join(f"q{i},0.5,1\n" for i in range(10)))
    proc = run("calibrate", "--records", str(path), "--alpha", "0.1", "--delta", "0.1", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert (report["certified"], report["m_star"], report["lam_hat"], report["fallback"]) == (
        False,
        -1,
        1.0,
        True,
    )


@pytest.mark.parametrize(
    ("content", "args", "message"),
    [
        ("query_id,p:a,y:a\nq,2,1\n", [], "column p:a: '2' is not in [0, 1]"),
        ("query_id,p:a,y:a\nq,0.5,\n", [], "no record has a label for every model"),
        ("query_id,p:a,y:a\nq,0.5,1\n", ["--alpha", "1.5"], "alpha must lie strictly between"),
        ("query_id,p:a,y:a\nq,0.5,1\n", ["--bound", "nope"], "unknown bound 'nope'"),
        ("query_id,p:a,y:a\nq,0.5,1\n", ["--alpha", "x"], "Invalid value for '--alpha'"),
        ("query_id,scope,p:a,y:a\nq,s1,0.5,1\nr,s2,0.5,1\n", [], "pick one with --scope"),
    ],
)
def test_errors_are_one_line_without_traceback(tmp_path, content, args, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    base = ["calibrate", "--records", str(path), "--alpha", "0.1", "--delta", "0.1"]
    proc = run(*base, *args)
    assert proc.returncode != 0
    *notes, error = proc.stderr.strip().splitlines()
    assert error.startswith("racer-online: error:") and message in error
    assert all(line.startswith("note:") for line in notes), proc.stderr


def test_missing_records_file_is_one_line(tmp_path):
    proc = run(
        "calibrate", "--records", str(tmp_path / "nope.csv"), "--alpha", "0.1", "--delta", "0.1"
    )
    assert proc.returncode == 1 and "No such file" in proc.stderr and "Traceback" not in proc.stderr


def test_evaluate_on_the_shipped_data():
    proc = run("evaluate", "--splits", "20", "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["rows"]
    by = {(r["alpha"], r["router"]): r for r in rows}
    assert {a for a, _ in by} == {0.05, 0.1, 0.2}
    for alpha in (0.05, 0.1, 0.2):
        racer, everything = by[(alpha, "racer")], by[(alpha, "all models")]
        assert racer["risk"] <= alpha + 0.02
        assert racer["mean_set_size"] < everything["mean_set_size"] == 9
        assert racer["mean_price"] < everything["mean_price"]
    assert by[(0.1, "top-1")]["risk"] > 0.1  # a single model misroutes more than alpha


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--seeds", "0"), "--seeds must be >= 1"),
        (("--data", "/nonexistent/outcomes.csv"), "cannot read the outcomes file"),
    ],
)
def test_backtest_errors_are_one_line(args, message):
    done = run("backtest", *args)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


def test_the_replay_table_flags_a_phase_over_alpha_and_explains_its_columns(capsys):
    from racer_online.apps.cli.common import show_replay

    def figures(name, miss):
        return {"name": name, "n": 200, "realised_miss_rate": miss, "mean_set_size": 2.0,
                "abstain_rate": 0.0, "mean_price": 1.0, "coverage": 0.8}  # fmt: skip

    phases = [figures("knowledge QA", 0.06), figures("hard tasks", 0.108)]
    top1 = [figures("knowledge QA", 0.2)] * 2
    show_replay({"alpha": 0.1, "delta": 0.1, "phases": phases, "baselines": {"top1": top1}},
                as_json=False)  # fmt: skip
    shown = capsys.readouterr().out
    [flagged] = [line for line in shown.splitlines() if "> alpha" in line]
    assert flagged.startswith("hard tasks") and "racer (online)" in flagged
    assert "coverage: share of queries whose set holds a correct model" in shown
    assert "over alpha = 0.1: hard tasks (0.108)." in shown
