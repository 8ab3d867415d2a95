"""Scope identity on the in-memory store: what a window's records depend on (the ordered
models, the base router) voids it when it changes; other settings recalibrate it."""

import logging

import numpy as np
import pytest
from test_service import Clock

from racer_online.messages import FeedbackMessage, QueryMessage
from racer_online.service import RacerService, store_config
from racer_online.settings import Settings
from racer_online.store import MemoryStore


def scopes(models, *, alpha=0.2, router_version=None):
    lines = ["[scopes.default]", f"alpha = {alpha}", "delta = 0.2"]
    lines += [f'router_version = "{router_version}"'] if router_version else []
    lines += ["[scopes.default.models]"] + [f"{m} = {{ price = 0.1 }}" for m in models]
    return "\n".join(lines) + "\n"


@pytest.fixture
def deploy(tmp_path):
    """A worker (service) started on a scopes file; later ones share the first one's store,
    as workers restarted with a new scopes file share Redis."""
    stores = []

    def factory(text, **overrides):
        path = tmp_path / f"scopes{len(stores)}.toml"
        path.write_text(text)
        settings = Settings(_env_file=None, scopes_file=path, **({"audit_rate": 1.0} | overrides))
        if stores:
            store = stores[0]
            store.config = store_config(settings)  # the same Redis, read with the new catalogue
        else:
            store = MemoryStore(store_config(settings), clock=Clock())
        stores.append(store)
        return RacerService(settings, store, clock=store.clock)

    return factory


async def calibrate(service, n=300, seed=0, prefix="q"):
    """Feed ``n`` graded decisions and tick until the scope certifies below lam = 1."""
    models = service.scopes["default"].models
    rng = np.random.default_rng(seed)
    scores = rng.uniform(size=(n, len(models))).round(3)
    labels = rng.uniform(size=scores.shape) < scores
    ids = [f"{prefix}{i}" for i in range(n)]
    await service.route([query(q, models, s) for q, s in zip(ids, scores, strict=True)])
    await service.record_feedback([
        FeedbackMessage(scope="default", query_id=q, labels=dict(zip(models, map(int, y),
                                                                      strict=True)))
        for q, y in zip(ids, labels, strict=True)
    ])  # fmt: skip
    updates = (await service.leader.recalibrate_due()).thresholds
    await service.leader.release()  # it stops: the next worker leads at once
    return updates[-1] if updates else None


def query(qid, models, scores):
    return QueryMessage(query_id=qid, scores=dict(zip(models, map(float, scores), strict=True)))


async def test_a_changed_model_list_voids_the_window_and_never_routes_on_the_old_threshold(
    deploy, caplog
):
    old = deploy(scopes(["m0", "m1", "m2"]))
    first = await calibrate(old)
    assert first.certified and first.lam < 1 and first.scope_id

    new = deploy(scopes(["m2", "m0"]))  # fewer models, another order
    with caplog.at_level(logging.WARNING):
        assert await new.refresh_thresholds() == []  # refused: certified for other records
    [routed] = await new.route([query("n1", ["m2", "m0"], [0.9, 0.1])])
    assert routed.decision.lam == 1.0 and routed.decision.audit

    updates = await new.leader.recalibrate_due()
    [alert] = updates.alerts
    assert alert.kind == "scope_changed" and alert.evidence["changed"] == ["models"]
    assert "models 3 -> 2 (-m1)" in alert.message
    [restart] = updates.thresholds
    assert restart.version == first.version + 1 and restart.scope_id != first.scope_id
    assert (restart.lam, restart.status, restart.n, restart.reason) == (
        1.0, "fallback", 0, "scope_changed"
    )  # fmt: skip
    assert await new.store.read_window("default") == []  # every old record is gone
    changed = [r.message for r in caplog.records if "changed:" in r.message]
    assert len(changed) == 1 and "models 3 -> 2" in changed[0]

    # Its own records certify it again, under its own identity, after the old versions.
    again = await calibrate(new, prefix="n")
    assert again.certified and again.scope_id == restart.scope_id
    assert again.n == 300 and again.version > restart.version


async def test_a_new_router_version_is_a_scope_change(deploy):
    old = deploy(scopes(["m0", "m1", "m2"], router_version="2026-11"))
    first = await calibrate(old)
    new = deploy(scopes(["m0", "m1", "m2"], router_version="2026-12"))
    assert await new.refresh_thresholds() == []
    updates = await new.leader.recalibrate_due()
    assert [a.evidence["changed"] for a in updates.alerts] == [["router"]]
    assert updates.thresholds[0].lam == 1.0 and updates.thresholds[0].version > first.version


async def test_a_retrained_router_file_is_a_scope_change(deploy, tmp_path):
    def router(weights):
        """A router's two files; the identity is their hash (routers/files.py)."""
        (tmp_path / f"router-{weights}.npz").write_bytes(weights.encode())
        header = tmp_path / f"router-{weights}.json"
        header.write_text("{}")
        return header

    old = deploy(scopes(["m0", "m1", "m2"]), router_file=router("first"))
    first = await calibrate(old)
    new = deploy(scopes(["m0", "m1", "m2"]), router_file=router("retrained"))
    assert new.scopes["default"].identity.router != old.scopes["default"].identity.router
    assert await new.refresh_thresholds() == []
    updates = await new.leader.recalibrate_due()
    assert [a.evidence["changed"] for a in updates.alerts] == [["router"]]
    assert updates.thresholds[0].version > first.version


async def test_another_alpha_recalibrates_the_same_window_at_once(deploy):
    old = deploy(scopes(["m0", "m1", "m2"], alpha=0.2))
    first = await calibrate(old)
    new = deploy(scopes(["m0", "m1", "m2"], alpha=0.3))
    assert await new.refresh_thresholds() == []  # certified at alpha 0.2: not routed on
    [routed] = await new.route([query("n1", ["m0", "m1", "m2"], [0.9, 0.1, 0.2])])
    assert routed.decision.lam == 1.0
    updates = await new.leader.recalibrate_due()
    assert updates.alerts == []  # nothing voided
    [update] = updates.thresholds
    assert (update.reason, update.alpha, update.n) == ("settings", 0.3, first.n)
    assert update.scope_id == first.scope_id and update.lam <= first.lam


async def test_a_restart_with_the_same_scopes_keeps_its_threshold(deploy):
    text = scopes(["m0", "m1", "m2"])
    first = await calibrate(deploy(text))
    again = deploy(text)
    assert [t.version for t in await again.refresh_thresholds()] == [first.version]
    assert (await again.leader.recalibrate_due()).alerts == []
    assert len(await again.store.read_window("default")) == 300


async def test_the_thresholds_table_shows_which_identity_a_threshold_was_certified_for(deploy):
    from rich.console import Console

    from racer_online.apps.cli.common import threshold_table

    service = deploy(scopes(["m0", "m1", "m2"]))
    threshold = await calibrate(service)
    console = Console(width=200, record=True)
    console.print(threshold_table("t", [threshold.model_dump()]))
    assert threshold.scope_id[:8] in console.export_text()
