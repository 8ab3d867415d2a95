"""Bad input to the commands a new user runs first: one line on stderr, no traceback, a
non-zero exit, each case as a real process; then each command doing what its help says.
No broker or Redis is running here: every address points at a closed port (or at one that
is not Kafka), so a case that reports its input problem proves the input was checked
before anything was sent."""

import csv
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import typer.main

from racer_online.apps.cli import app
from racer_online.local.processes import free_port
from racer_online.records import Records, write_records

MODELS = ("org/model-a", "vendor:model.b")


@pytest.fixture(scope="module")
def closed_env():
    broker, redis = free_port(), free_port()  # nothing listens on them
    return os.environ | {
        "RACER_KAFKA_BROKER": f"kafka://127.0.0.1:{broker}",
        "RACER_REDIS_URL": f"redis://127.0.0.1:{redis}/0",
    }


def run(*args, env, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "racer_online", *map(str, args)],
        capture_output=True, text=True, timeout=300, env=env, cwd=cwd,
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


# -- each command does what its help says ----------------------------------------------------


def own_outcomes(path, n, *, seed=0):
    """An outcomes CSV of ``n`` questions over two models, three tasks, no prices."""
    rng = np.random.default_rng(seed)
    words = ["sum", "prove", "translate", "list", "name", "code", "explain", "sort"]
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["question", "task", *(f"y:{m}" for m in MODELS)])
        for i in range(n):
            task = i % 3
            question = f"{words[task]} {' '.join(rng.choice(words, 4))} item {i}"
            out.writerow([question, f"t{task}", *(rng.uniform(size=2) < [0.5, 0.8]).astype(int)])
    return path


def test_backtest_on_own_data_without_a_router_trains_one_as_the_demo_does(scoped_env, tmp_path):
    data = own_outcomes(tmp_path / "mine.csv", 300)
    done = run("backtest", "--data", data, "--seeds", "1", "--json", env=scoped_env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert [p["n"] > 0 for p in result["phases"]] == [True] * len(result["phases"])
    header = json.loads((tmp_path / "artifacts/demo/router.json").read_text())
    assert header["training"]["data"] == str(data)  # trained on the data, not the shipped one


def test_evaluate_adapts_its_calibration_size_to_small_data(scoped_env, tmp_path):
    data = own_outcomes(tmp_path / "mine.csv", 600)
    done = run("evaluate", "--data", data, "--splits", "2", "--json", env=scoped_env)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["n_calibration"] == 210  # half of the 420 held-out rows
    too_many = run("evaluate", "--data", data, "--n-calibration", "1000", env=scoped_env)
    assert_one_line_error(too_many, "--n-calibration must lie in [1, 419]")


def test_replay_takes_prices_and_the_worker_s_router(scoped_env, tmp_path):
    data = own_outcomes(tmp_path / "mine.csv", 30)
    (tmp_path / "my-prices.csv").write_text("model,price\norg/model-a,1.5\n")
    unpriced = run("replay", "--data", data, "--prices", tmp_path / "my-prices.csv", env=scoped_env)
    assert_one_line_error(unpriced, "vendor:model.b")
    absent = run("replay", "--data", data, "--router", tmp_path / "absent.json", env=scoped_env)
    assert_one_line_error(absent, f"cannot read the router {tmp_path / 'absent.json'}")


def test_dlq_json_is_documented_as_json_lines(scoped_env):
    shown = run("dlq", "--help", env=scoped_env | {"COLUMNS": "200"})
    assert "JSON lines: one object a letter" in shown.stdout


def test_publishing_an_empty_file_is_an_error(scoped_env, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    for command, noun in (("publish", "query"), ("feedback", "feedback event")):
        done = run(command, empty, env=scoped_env)
        assert_one_line_error(done, f"{empty}: no {noun} in it; nothing sent")


def test_a_port_that_is_not_kafka_fails_in_seconds_as_one_line(scoped_env, tmp_path):
    """The kernel accepts the connection and nothing ever answers: the client's own 40 s
    request timeout would apply; the probe's 5 s does."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        broker = f"kafka://127.0.0.1:{silent.getsockname()[1]}"
        for args in (("dlq",), ("publish", "--force", records_jsonl(tmp_path))):
            done = run(*args, env=scoped_env | {"RACER_KAFKA_BROKER": broker})
            assert_one_line_error(
                done, "cannot reach the Kafka broker", "no Kafka answer within 5 s"
            )


def records_jsonl(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"query_id": "q1", "scope": "default", "scores": {MODELS[0]: 0.5}}))
    return path


def test_no_help_text_breaks_mid_sentence():
    """Every paragraph of every command's help is one line: the terminal wraps it."""

    def helps(command, path):
        yield path, command.help or ""
        for name, sub in getattr(command, "commands", {}).items():
            yield from helps(sub, f"{path} {name}")

    broken = [
        path
        for path, text in helps(typer.main.get_command(app), "racer-online")
        if any("\n" in paragraph for paragraph in text.split("\n\n"))
    ]
    assert broken == []
