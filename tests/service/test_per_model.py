"""Per-model figures: the core function, the threshold statistics, the decision-time
counters, and `RacerService.decide` (what the ``route`` command uses)."""

import numpy as np
import pytest
from prometheus_client import REGISTRY

from racer_online import core
from racer_online.messages import FeedbackMessage, QueryMessage
from racer_online.service import RacerService, Rejected, store_config
from racer_online.settings import Settings
from racer_online.store import FeedbackOutcome, MemoryStore

MODELS = ("m0", "m1", "m2")
PRICES = (0.1, 0.2, 0.9)


@pytest.fixture
def service(tmp_path):
    path = tmp_path / "scopes.toml"
    lines = ["[scopes.default]", "alpha = 0.2", "delta = 0.2", "[scopes.default.models]"]
    path.write_text("\n".join(lines + [f"{m} = {{ price = {p} }}" for m, p in
                                       zip(MODELS, PRICES, strict=True)]))  # fmt: skip
    settings = Settings(_env_file=None, scopes_file=path, audit_rate=1.0)
    return RacerService(settings, MemoryStore(store_config(settings)))


def query(qid, scores=(0.7, 0.2, 0.4), **kw):
    return QueryMessage(query_id=qid, scores=dict(zip(MODELS, scores, strict=True)), **kw)


def test_model_stats_counts_membership_and_spend():
    levels = np.array([[0.1, 0.5, 0.9, 0.2], [0.3, 0.2, 0.4, 0.9], [0.9, 0.9, 0.1, 0.9]])
    stats = core.model_stats(levels, 0.4, prices=np.array([1.0, 2.0, 4.0]))
    # In the set at 0.4: row 0 {m0}, row 1 {m0, m1, m2}, row 2 {m2}; the ⊥ column is ignored.
    np.testing.assert_allclose(stats.in_set_rate, [2 / 3, 1 / 3, 2 / 3])
    np.testing.assert_allclose(stats.price_share, np.array([2.0, 2.0, 8.0]) / 12)
    nothing = core.model_stats(levels, 0.0, prices=np.array([1.0, 2.0, 4.0]))
    assert nothing.in_set_rate.tolist() == [0, 0, 0] and nothing.price_share.tolist() == [0, 0, 0]


async def test_the_threshold_carries_per_model_figures_of_its_window(service):
    rng = np.random.default_rng(3)
    scores = rng.uniform(size=(300, 3)).round(3)
    labels = rng.uniform(size=(300, 3)) < scores
    await service.route([query(f"w{i}", tuple(s)) for i, s in enumerate(scores)])
    await service.record_feedback([
        FeedbackMessage(scope="default", query_id=f"w{i}",
                        labels=dict(zip(MODELS, map(int, row), strict=True)))
        for i, row in enumerate(labels)
    ])  # fmt: skip
    [update] = (await service.leader.recalibrate_due()).thresholds
    assert update.status == "certified"
    levels = service.scopes["default"].levels(scores, np.prod(1 - scores, axis=1))
    chosen = core.members(levels[:, :3], update.lam)
    assert list(update.per_model) == list(MODELS)
    for j, m in enumerate(MODELS):
        assert update.per_model[m]["in_set_rate"] == pytest.approx(chosen[:, j].mean())
    spend = chosen.sum(axis=0) * np.array(PRICES)
    shares = [update.per_model[m]["price_share"] for m in MODELS]
    np.testing.assert_allclose(shares, spend / spend.sum())
    assert 0 < chosen.mean() < 1  # a threshold that tells the models apart


def counter(name, scope, model):
    return REGISTRY.get_sample_value(f"{name}_total", {"scope": scope, "model": model}) or 0.0


async def test_decisions_count_per_model_on_metrics(service):
    before = {m: (counter("racer_model_in_set", "default", m),
                  counter("racer_model_price", "default", m)) for m in MODELS}  # fmt: skip
    routed = await service.route([query(f"pm{i}") for i in range(5)])
    held = {m: sum(m in r.decision.models for r in routed) for m in MODELS}
    assert sum(held.values()) > 0
    for m, price in zip(MODELS, PRICES, strict=True):
        in_set, spent = before[m]
        assert counter("racer_model_in_set", "default", m) - in_set == held[m]
        assert counter("racer_model_price", "default", m) - spent == pytest.approx(held[m] * price)


async def test_decide_stores_and_counts_nothing_and_agrees_with_route(service):
    before = counter("racer_model_in_set", "default", "m0")
    decided = service.decide([query("d1"), query("d2", scope="nope")])
    assert isinstance(decided[1], Rejected) and decided[1].kind == "unknown_scope"
    assert counter("racer_model_in_set", "default", "m0") == before
    # Nothing was stored: feedback for the decided query finds no decision and is held.
    [held] = await service.record_feedback(
        [FeedbackMessage(scope="default", query_id="d1", labels={"m0": 1})]
    )
    assert held == FeedbackOutcome.HELD
    [routed] = await service.route([query("d1")])
    assert routed.decision.models == decided[0].decision.models


def test_the_monitor_shows_the_models_most_used_first():
    import io

    from rich.console import Console

    from racer_online.apps.monitor import MODEL_ROWS, build_frame
    from racer_online.messages import ThresholdMessage

    per_model = {f"org/m{i}": {"in_set_rate": i / 20, "price_share": i / 210} for i in range(20)}
    last = ThresholdMessage(
        scope="s", version=3, lam=0.4, status="certified", certified=True, n=100, alpha=0.1,
        delta=0.1, bound="binomial", rule="cumulative", miss="answerable", m_star=4,
        reason="records", per_model=per_model, computed_at=1_800_000_000.0,
    )  # fmt: skip
    console = Console(file=io.StringIO(), width=120, color_system=None)
    console.print(build_frame({"s": {"thresholds": [last], "alerts": []}}, 1_800_000_001.0))
    lines = [line for line in console.file.getvalue().splitlines() if "org/m" in line]
    assert len(lines) == MODEL_ROWS
    assert lines[0].split()[1:4] == ["org/m19", "95.0%", "9.0%"]
    assert "org/m7 " not in console.file.getvalue() and "+8 more" in console.file.getvalue()
