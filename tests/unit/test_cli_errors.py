"""Bad input to the commands a new user runs first: one line on stderr, no traceback, a
non-zero exit, each case as a real process. No broker or Redis is running here: every
address points at a closed port, so a case that reports its input problem proves the
input was checked before anything was sent."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from racer_online.local.services import free_port
from racer_online.offline.records import Records, write_records

MODELS = ("org/model-a", "vendor:model.b")


@pytest.fixture(scope="module")
def closed_env():
    broker, redis = free_port(), free_port()  # nothing listens on them
    return os.environ | {
        "RACER_KAFKA_BROKER": f"kafka://127.0.0.1:{broker}",
        "RACER_REDIS_URL": f"redis://127.0.0.1:{redis}/0",
    }


def run(*args, env):
    return subprocess.run(
        [sys.executable, "-m", "racer_online", *map(str, args)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip


def assert_one_line_error(proc, *fragments):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0, proc.stderr
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "Unclosed" not in proc.stderr
    assert lines[0].startswith("racer-online: error: ")
    for fragment in fragments:
        assert fragment in lines[0]
    return lines[0]


@pytest.fixture
def scoped_env(closed_env, tmp_path):
    lines = ["[scopes.default]", "alpha = 0.1", "delta = 0.1", "[scopes.default.models]"]
    lines += [f'"{m}" = {{ price = 1.0 }}' for m in MODELS]
    (tmp_path / "scopes.toml").write_text("\n".join(lines) + "\n")
    return closed_env | {"RACER_SCOPES_FILE": str(tmp_path / "scopes.toml")}


def records_csv(path, *, query_id="q1", scope="default"):
    write_records(path, Records(
        query_ids=(query_id, "q2"), models=MODELS, scores=np.array([[0.2, 0.7], [0.5, 0.5]]),
        labels=np.array([[0.0, 1.0], [1.0, np.nan]]), scopes=(scope, "default"),
    ))  # fmt: skip
    return path


@pytest.mark.parametrize("command", ["publish", "feedback"])
def test_an_unreachable_broker_is_one_line(command, scoped_env, tmp_path):
    proc = run(command, records_csv(tmp_path / "r.csv"), env=scoped_env)
    assert_one_line_error(proc, "cannot reach the Kafka broker at 127.0.0.1:")


@pytest.mark.parametrize("command", ["publish", "feedback"])
@pytest.mark.parametrize(
    ("cells", "fragment"),
    [
        ({"scope": ""}, "r.csv, line 2: schema: scope: use 1 to 128"),
        ({"scope": "no spaces!"}, "r.csv, line 2: schema: scope: use 1 to 128"),
        ({"query_id": "x" * 300}, "r.csv, line 2: schema: query_id: String should have at most"),
    ],
)
def test_a_records_csv_with_a_bad_scope_or_query_id_is_one_line(
    command, cells, fragment, scoped_env, tmp_path
):
    proc = run(command, records_csv(tmp_path / "r.csv", **cells), env=scoped_env)
    assert_one_line_error(proc, "r.csv", fragment)


def test_publish_checks_the_whole_file_before_connecting(scoped_env, tmp_path):
    good = {"query_id": "a", "scores": dict.fromkeys(MODELS, 0.5)}
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(good) + "\n" + '{"query_id": "b", "scores": }\n')
    assert_one_line_error(run("publish", path, env=scoped_env), "q.jsonl, line 2: invalid JSON")


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ({"scope": "other", "scores": dict.fromkeys(MODELS, 0.5)}, "unknown scope 'other'"),
        ({"scores": {"org/model-a": 0.5, "z": 0.1}}, "unknown model 'z' in scope 'default'"),
        ({"scores": {"org/model-a": 0.5}}, "no score for model 'vendor:model.b'"),
    ],
)
def test_publish_refuses_what_the_worker_would_dead_letter(query, fragment, scoped_env, tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps({"query_id": "a"} | query) + "\n")
    line = assert_one_line_error(run("publish", path, env=scoped_env), "q.jsonl, line 1", fragment)
    assert "nothing sent (--force sends anyway)" in line
    # --force sends anyway, so it gets as far as the (closed) broker.
    forced = run("publish", "--force", path, env=scoped_env)
    assert_one_line_error(forced, "cannot reach the Kafka broker")


def outcomes_csv(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([["question", "task", *(f"y:{m}" for m in MODELS)], *rows])
    return path


@pytest.mark.parametrize("command", ["replay", "evaluate"])
@pytest.mark.parametrize(
    ("rows", "fragment"),
    [
        ([["q", "t", "1", "0"], ["r", "t", "1", "yes"]], "line 3, column y:vendor:model.b: 'yes'"),
        ([["q", "t", "1", "0"], ["r", "t", "1"]], "line 3: 3 fields, the header has 4"),
        ([["q", "t", "1", "0.5"]], "column y:vendor:model.b: '0.5' is not 0 or 1"),
    ],
)
def test_a_bad_outcomes_file_is_one_line(command, rows, fragment, scoped_env, tmp_path):
    path = outcomes_csv(tmp_path / "o.csv", rows)
    assert_one_line_error(run(command, "--data", path, env=scoped_env), "o.csv", fragment)


def test_a_schedule_naming_an_unknown_task_lists_the_data_s_tasks(scoped_env, tmp_path):
    path = outcomes_csv(tmp_path / "o.csv", [["q", "math", "1", "0"], ["r", "code", "0", "1"]])
    proc = run("replay", "--data", path, "--schedule", "easy=math;hard=gpqa", env=scoped_env)
    assert_one_line_error(proc, "phase 'hard': no task 'gpqa' in o (its tasks: math, code)")
    untasked = tmp_path / "u.csv"
    untasked.write_text("question,y:a\nq,1\n")
    proc = run("replay", "--data", untasked, "--schedule", "p=math", env=scoped_env)
    assert_one_line_error(proc, "(its tasks: none: the data has no task column)")


def test_evaluate_on_own_data_titles_it_and_fits_a_pipe(scoped_env, tmp_path):
    rng = np.random.default_rng(0)
    rows = [[f"q{i}", f"t{i % 3}", *(rng.uniform(size=2) < [0.5, 0.8]).astype(int)]
            for i in range(200)]  # fmt: skip
    path = outcomes_csv(tmp_path / "mine.csv", rows)
    proc = run("evaluate", "--data", path, "--n-calibration", "60", "--splits", "3",
               env=scoped_env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("RACER on mine: cumulative / answerable")
    assert "…" not in proc.stdout and "│" not in proc.stdout  # plain, never cut
    assert proc.stderr.strip() == (
        "note: mine gives no prices (price:<model> columns or --prices): mean price is 0"
    )
    assert len(proc.stdout.splitlines()) == 1 + 1 + 9  # title, header, 3 alphas x 3 routers


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("route", "--scores", '{"org/model-a": 0.5}'), "redis unavailable"),
        (("route", "--scores", "{nope"), "--scores is not JSON"),
        (("route",), "give the query as text or as --scores"),
        (("dlq",), "cannot reach the Kafka broker"),
        (("dlq", "--last", "0"), "--last must be >= 1"),
        (("records", "--router", "absent.json", "--out", "r.csv", "--scope", "a b"), "--scope"),
        (("records", "--router", "absent.json", "--out", "r.csv", "--limit", "0"), "--limit"),
        (("records", "--router", "absent.json", "--out", "r.csv"), "absent.json"),
        (("backtest", "--bound", "gauss"), "unknown bound 'gauss'"),
        (("backtest", "--warm-start", "absent.csv"), "--warm-start absent.csv: no such file"),
    ],
)
def test_the_new_commands_fail_in_one_line(args, fragment, scoped_env, tmp_path):
    assert_one_line_error(run(*args, env=scoped_env), fragment)
