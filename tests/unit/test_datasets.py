"""The outcomes format: y:<model> and price:<model> columns, free model names, the shipped
layout, errors naming file, line and column, and schedules derived from the data."""

import csv
import tomllib

import numpy as np
import pytest

from racer_online.apps.replay import plan
from racer_online.datasets import load_outcomes, records_from_outcomes, scopes_toml
from racer_online.errors import InvalidInputError
from racer_online.offline.schedules import DEFAULT_SCHEDULE, check_schedule, default_schedule
from racer_online.records import read_records, write_records
from racer_online.scopes import load_scopes

MODELS = ("org/model-a", "vendor:model.b", "c v1.5")


def write(path, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)
    return path


@pytest.fixture
def own_csv(tmp_path):
    header = ["query_id", "question", "task", *(f"y:{m}" for m in MODELS)]
    header += [f"price:{m}" for m in MODELS]
    rows = [
        ["a1", "first question", "alpha", 1, 0, 1, 0.1, 2.0, 5],
        ["a2", "second, with a comma", "beta", 0, 0, 1, 0.3, 2.0, 5],
        ["a3", "third\nover two lines", "alpha", 1, 1, 0, 0.2, 2.0, 5],
        ["a4", "fourth", "gamma", 0, 1, 0, 0.2, 2.0, 5],
    ]
    return write(tmp_path / "mine.csv", [header, *rows])


def test_own_format_keeps_names_order_labels_prices_and_tasks(own_csv):
    outcomes = load_outcomes(own_csv)
    assert outcomes.models == MODELS  # the catalogue is the file's column order
    assert outcomes.query_ids == ("a1", "a2", "a3", "a4")
    assert outcomes.questions[2] == "third\nover two lines"
    np.testing.assert_array_equal(outcomes.labels, [[1, 0, 1], [0, 0, 1], [1, 1, 0], [0, 1, 0]])
    np.testing.assert_allclose(outcomes.prices, [0.2, 2.0, 5.0])  # the columns' means
    assert outcomes.priced and outcomes.name == "mine"
    assert outcomes.task_names == ("alpha", "beta", "gamma")


def test_the_shipped_layout_is_still_read():
    outcomes = load_outcomes()
    assert len(outcomes) == 6108 and len(outcomes.models) == 9
    assert outcomes.name == "llmrouter-9llm" and outcomes.priced
    assert outcomes.models[0] == "codegemma-7b" and outcomes.prices[0] == 0.2
    assert "gsm8k" in outcomes.task_names


def test_scores_need_a_stated_threshold(tmp_path):
    path = write(tmp_path / "o.csv", [["question", "y:m1", "y:m2"], ["q", "0.7", "0.2"]])
    with pytest.raises(InvalidInputError, match=r"o.csv, line 2, column y:m1: '0.7' is not 0 or 1"):
        load_outcomes(path)
    outcomes = load_outcomes(path, correct_at=0.5)
    np.testing.assert_array_equal(outcomes.labels, [[True, False]])
    assert not outcomes.priced and outcomes.prices.tolist() == [0.0, 0.0]
    assert outcomes.query_ids == ("0",) and outcomes.task_names == ()


def test_a_prices_file_beside_or_given(tmp_path):
    data = tmp_path / "set"
    data.mkdir()
    write(data / "outcomes.csv", [["question", "y:a/b", "y:c"], ["q", "1", "0"]])
    write(data / "prices.csv", [["model", "price"], ["c", "3"], ["a/b", "0.5"]])
    assert load_outcomes(data).prices.tolist() == [0.5, 3.0]
    other = write(tmp_path / "p.csv", [["model", "price"], ["a/b", "1"]])
    with pytest.raises(InvalidInputError, match=r"p.csv: no price for model 'c'"):
        load_outcomes(data, prices_file=other)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        ([["question", "y:m"], ["q", "yes"]], r"o.csv, line 2, column y:m: 'yes' is not a number"),
        (
            [["question", "y:m"], ["q", "1"], ["r", "1", "0"]],
            r"o.csv, line 3: 3 fields, the header has 2",
        ),
        ([["question", "y:m", "price:m"], ["q", "1", "x"]], r"line 2, column price:m: 'x' is not"),
        ([["question", "y:m", "price:m"], ["q", "1", "-1"]], r"line 2, column price:m: a price"),
        ([["question", "y:m", "y:n", "price:m"], ["q", "1", "0", "1"]], r"no price:n column"),
        ([["question", "y:m", "price:z"], ["q", "1", "1"]], r"price:z names no y: model"),
        ([["text", "y:m"], ["q", "1"]], r"o.csv: no question column"),
        ([["question"], ["q"]], r"o.csv: no y:<model> label columns"),
        ([["question", "y:m", "y:m"], ["q", "1", "1"]], r"column 'y:m' appears twice"),
        ([["question", "y: m"], ["q", "1"]], r"model name ' m' must be"),
        ([["question", "y:m"]], r"o.csv: no rows after the header"),
        (
            [["query_id", "question", "y:m"], [" ", "q", "1"]],
            r"line 2, column query_id: it is empty",
        ),
    ],
)
def test_read_errors_name_file_line_and_column(tmp_path, rows, message):
    with pytest.raises(InvalidInputError, match=message) as error:
        load_outcomes(write(tmp_path / "o.csv", rows))
    assert "\n" not in str(error.value)


def test_default_schedule_is_the_shipped_one_or_the_data_s_tasks(own_csv, tmp_path):
    assert default_schedule(load_outcomes()) == DEFAULT_SCHEDULE
    own = load_outcomes(own_csv)
    phases = default_schedule(own)
    assert [p.tasks for p in phases] == [("alpha",), ("beta",), ("gamma",)]
    chosen = plan(own, seed=1)
    assert sorted(chosen.rows.tolist()) == [0, 1, 2, 3]
    assert [own.tasks[r] for r in chosen.rows[chosen.phase == 0]] == ["alpha", "alpha"]
    untasked = load_outcomes(write(tmp_path / "u.csv", [["question", "y:m"], ["q", 1], ["r", 0]]))
    assert len(plan(untasked).rows) == 2 and len(default_schedule(untasked)) == 1


def test_a_schedule_naming_an_unknown_task_lists_the_existing_ones(own_csv):
    own = load_outcomes(own_csv)
    with pytest.raises(InvalidInputError) as error:
        check_schedule(own, [*default_schedule(own)[:1], DEFAULT_SCHEDULE[0]])
    assert str(error.value) == (
        "schedule phase 'knowledge QA': no task 'natural_qa' in mine "
        "(its tasks: alpha, beta, gamma)"
    )


def test_records_and_scopes_from_outcomes_round_trip(own_csv, tmp_path):
    own = load_outcomes(own_csv)
    scores = np.linspace(0.1, 0.9, 6).reshape(2, 3)
    made = records_from_outcomes(own, np.array([1, 3]), scores, scope="s1")
    write_records(tmp_path / "r.csv", made)
    back = read_records(tmp_path / "r.csv")
    assert back.models == MODELS and back.query_ids == ("a2", "a4") and back.scopes == ("s1",) * 2
    np.testing.assert_array_equal(back.labels, own.labels[[1, 3]].astype(float))
    np.testing.assert_allclose(back.costs, [[0.2, 2.0, 5.0]] * 2)
    (tmp_path / "scopes.toml").write_text(scopes_toml(own, scope="s1", alpha=0.2))
    tomllib.loads((tmp_path / "scopes.toml").read_text())
    scope = load_scopes(tmp_path / "scopes.toml")["s1"]
    assert scope.model_names == MODELS and scope.prices == (0.2, 2.0, 5.0) and scope.alpha == 0.2


def test_data_without_tasks_still_evaluates(tmp_path):
    from racer_online.offline.evaluation import task_router_records

    rng = np.random.default_rng(2)
    rows = [[f"q{i}", *(rng.uniform(size=2) < [0.4, 0.7]).astype(int)] for i in range(100)]
    outcomes = load_outcomes(write(tmp_path / "o.csv", [["question", "y:a", "y:b"], *rows]))
    records = task_router_records(outcomes)
    # One group: every record gets each model's accuracy on the fitted 30%.
    assert len(records) == 70 and len(np.unique(records.scores, axis=0)) == 1
    assert 0.2 < records.scores[0, 0] < 0.6 and 0.5 < records.scores[0, 1] < 0.9
