"""The backtest drives the service and leader in simulated time; its figures are exact."""

import numpy as np

from racer_online.apps import replay
from racer_online.datasets import Outcomes
from racer_online.offline import backtest as bt

MODELS = ("m0", "m1", "m2")
PRICES = (1.0, 2.0, 3.0)


def scored(n=1200, seed=0):
    """Two tasks: on 'easy' the router's favourite answers, on 'hard' it mostly does not."""
    rng = np.random.default_rng(seed)
    tasks = np.where(np.arange(n) < n // 2, "easy", "hard")
    hard = tasks == "hard"
    correct = rng.uniform(size=(n, 3)) < np.where(hard[:, None], [0.3, 0.5, 0.8], [0.9, 0.4, 0.2])
    outcomes = Outcomes(tuple(f"q{i}" for i in range(n)), tasks, MODELS, correct, np.array(PRICES))
    scores = np.clip(np.tile([0.8, 0.5, 0.2], (n, 1)) + rng.normal(0, 0.1, (n, 3)), 0, 1)
    return bt.Scored(outcomes, np.arange(n), scores, np.full(n, np.nan), MODELS)


def levels(decision):
    """Entry levels under the default rule (cumulative): the score mass ranked above."""
    scores = np.array([decision.scores[m] for m in MODELS])
    order = np.argsort(-scores, kind="stable")
    mass = np.cumsum(scores[order]) / scores.sum()
    out = np.empty(3)
    out[order] = np.concatenate([[0.0], mass[:-1]])
    return out


SCHEDULE = (replay.Phase("easy", ("easy",)), replay.Phase("hard", ("hard",)))


def test_figures_equal_those_recomputed_from_the_decisions():
    data = scored()
    settings = bt.settings_for(MODELS, PRICES, audit_rate=0.2, scope={"alpha": 0.1, "delta": 0.1})
    the_plan = replay.plan(data.outcomes, SCHEDULE, seed=3)
    run = bt.asyncio.run(bt.run_stream(settings, data, the_plan, pacing=bt.Pacing(), run_id="t"))
    got = bt.figures(run, data, settings.scopes["default"])

    labels = data.outcomes.labels[the_plan.rows]
    assert [d.query_id for d in run.decisions] == [f"t-{i}" for i in range(len(labels))]
    for k, phase in enumerate(got["phases"]):
        at = np.flatnonzero(the_plan.phase == k)
        misses, sizes, extra = [], [], []
        for i in at:
            d = run.decisions[i]
            chosen = [MODELS.index(m) for m in d.models]
            misses.append(labels[i].any() and not labels[i, chosen].any())
            sizes.append(len(chosen))
            extra.append(len(MODELS) - len(chosen) if d.audit else 0)
        assert phase["n"] == len(at)
        assert phase["realised_miss_rate"] == np.mean(misses)
        assert phase["mean_set_size"] == np.mean(sizes)
        assert phase["extra_gradings_per_query"] == np.mean(extra)
        t = np.array(
            [
                min((lv for lv, y in zip(levels(d), labels[j], strict=False) if y), default=0.0)
                for j, d in ((j, run.decisions[j]) for j in at)
            ]
        )
        risk = [np.mean(run.decisions[j].lam < t) for j in at]
        unsafe = [r for r, x in enumerate(risk) if x > 0.12]
        assert phase["queries_to_safe"] == (unsafe[-1] + 1 if unsafe else 0)
        over = [x > 0.1 for x in risk]  # under a threshold whose risk on the phase > alpha
        assert phase["over_alpha_share"] == np.mean(over)
        assert phase["ever_over_alpha"] == float(any(over))
    first = [len(d.models) for d in run.decisions[:1000]]
    assert got["first_1000_mean_set_size"] == np.mean(first)
    assert run.updates, "the leader recalibrated in simulated time"
    assert len({d.threshold_version for d in run.decisions}) > 1


def test_feedback_arrives_after_the_lag():
    """With a lag longer than the stream no label reaches the window: fallback throughout."""
    data = scored(n=200)
    settings = bt.settings_for(MODELS, PRICES, audit_rate=1.0, scope={"alpha": 0.1, "delta": 0.1})
    the_plan = replay.plan(data.outcomes, SCHEDULE, seed=0)
    pacing = bt.Pacing(feedback_lag=500)
    run = bt.asyncio.run(bt.run_stream(settings, data, the_plan, pacing=pacing, run_id="t"))
    assert {d.threshold_status for d in run.decisions} == {"fallback"}
    pacing = bt.Pacing(feedback_lag=20)
    run = bt.asyncio.run(bt.run_stream(settings, data, the_plan, pacing=pacing, run_id="t"))
    assert "certified" in {d.threshold_status for d in run.decisions}


def test_backtest_reports_mean_and_worst_seed():
    data = scored(n=600)
    settings = bt.settings_for(MODELS, PRICES, audit_rate=0.5, scope={"alpha": 0.1, "delta": 0.1})
    result = bt.backtest(settings, data, SCHEDULE, seeds=3)
    assert result["seeds"] == 3 and result["audit_rate"] == 0.5
    for phase in result["phases"]:
        assert phase["worst_realised_miss_rate"] >= phase["realised_miss_rate"]
        assert {"extra_gradings_per_query", "alarms", "mean_set_size"} <= set(phase)
    assert set(result["baselines"]) == {"sliding window", "static", "top1", "all", "cheapest"}


def test_queries_to_safe_is_when_the_thresholds_become_safe_for_the_phase():
    required = np.linspace(0.01, 1.0, 100)  # lam = 0.9 misses 10% of the phase, 0.5 half
    lam = np.array([0.5, 0.5, 1.0, 0.95, 0.5, 0.9, 0.95, 1.0])
    assert bt.queries_to_safe(lam, required, safe=0.12) == 5  # lam 0.5 is the last unsafe
    assert bt.queries_to_safe(lam[5:], required, safe=0.12) == 0
    assert bt.queries_to_safe(lam[5:], required, safe=0.06) == 1  # 0.9 misses 10%


def test_a_trim_freezes_the_anytime_threshold_and_not_the_binomial_one():
    """The anytime e-process runs on a segment's cumulative records; once the sliding
    window trims some of them, the certified threshold stays until the next alarm, while
    the binomial bound goes on recalibrating on the window (docs/method.md section 6)."""
    data = scored(n=600)
    the_plan = replay.plan(data.outcomes, (replay.Phase("easy", ("easy",)),), seed=1)
    after_trims = {}
    for bound in ("anytime", "binomial"):
        settings = bt.settings_for(
            MODELS, PRICES, audit_rate=1.0, monitor=False, window_size=120,
            scope={"alpha": 0.1, "delta": 0.1, "bound": bound},
        )  # fmt: skip
        run = bt.asyncio.run(
            bt.run_stream(settings, data, the_plan, pacing=bt.Pacing(), run_id="t")
        )
        # the window holds 120 records from about query 140 (the lag, a tick) on
        late = run.decisions[200:]
        after_trims[bound] = {(d.lam, d.threshold_version) for d in late}
        assert all(d.lam < 1 for d in late), "certified before the first trim"
    assert len({lam for lam, _ in after_trims["anytime"]}) == 1
    assert len({lam for lam, _ in after_trims["binomial"]}) > 1


def test_a_warm_start_certifies_from_the_first_tick(tmp_path):
    """`--warm-start FILE`: the window starts from the file's fully graded records, so the
    stream routes below lam = 1 as soon as the leader has ticked once."""
    from racer_online.records import Records, write_records

    warm = scored(n=1200, seed=5)
    easy = np.flatnonzero(warm.outcomes.tasks == "easy")
    path = tmp_path / "warm.csv"
    write_records(path, Records(
        tuple(f"w{i}" for i in easy), MODELS, warm.scores[easy],
        warm.outcomes.labels[easy].astype(float),
    ))  # fmt: skip
    data = scored(n=400)
    the_plan = replay.plan(data.outcomes, (replay.Phase("easy", ("easy",)),), seed=2)
    lams = {}
    for name, scope in (("cold", {}), ("warm", {"warm_start": str(path)})):
        settings = bt.settings_for(
            MODELS, PRICES, audit_rate=0.2, scope={"alpha": 0.1, "delta": 0.1} | scope
        )
        run = bt.asyncio.run(
            bt.run_stream(settings, data, the_plan, pacing=bt.Pacing(), run_id="t")
        )
        lams[name] = [d.lam for d in run.decisions[10:30]]  # after the first tick
    assert all(lam == 1.0 for lam in lams["cold"])  # no label has come back yet
    assert all(lam < 1.0 for lam in lams["warm"])
