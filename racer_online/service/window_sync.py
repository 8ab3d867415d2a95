"""The leader's view of each scope's window: sweep expired audits into it, read what entered
since the last look, watch the new exact outcomes, trim by size and age.

Every write here carries the scope's lease epoch (`service.lease`): a superseded leader's
sweep, trim or monitor state is refused by the store and changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

from racer_online import core
from racer_online.core import policy
from racer_online.errors import ConfigError
from racer_online.messages import AlertMessage
from racer_online.records import read_records
from racer_online.service import drift as watch
from racer_online.service import identity, metrics
from racer_online.service.scope import Monitor, ScopeState
from racer_online.service.window import WindowCache, pack_scores
from racer_online.settings import Settings
from racer_online.store import Store, StreamId, WindowEntry

READ_CHUNK = 10_000
SWEEP_CHUNK = 100  # audits per sweep call: each call blocks Redis as briefly as a route call
BEFORE_ANY = StreamId(-1, -1)  # orders before every window record
log = logging.getLogger(__name__)


class WindowSync:
    def __init__(self, settings: Settings, store: Store, *, clock: Callable[[], float]) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.expired_audits: dict[str, int] = {}  # scope -> entered as a worst case, in all
        self.awaiting: dict[str, int] = {}  # scope -> audits awaiting grading at the last sweep

    async def sweep_expired_audits(self, scope_name: str, *, now: float, epoch: int) -> None:
        """Audits whose grading never completed enter the window as a worst case: a label
        missing because of the query (not at random) would otherwise bias the risk low."""
        while True:
            swept = await self.store.sweep_expired_audits(
                scope_name, now=now, epoch=epoch, limit=SWEEP_CHUNK
            )
            self.expired_audits[scope_name] = swept.expired_total
            self.awaiting[scope_name] = swept.awaiting
            metrics.AWAITING_AUDITS.labels(scope_name).set(swept.awaiting)
            metrics.EXPIRED_AUDITS.labels(scope_name).inc(swept.entered)
            metrics.LOST_AUDITS.labels(scope_name).inc(swept.lost)
            if swept.entered + swept.lost < SWEEP_CHUNK:
                return

    async def sync(
        self, scope: ScopeState, *, now: float, epoch: int
    ) -> tuple[AlertMessage | None, int]:
        """Read records entered since the last read, watch their outcomes, trim the window:
        (a drift alarm, records trimmed)."""
        await self.load_monitor(scope)
        before = len(scope.window)
        while True:
            entries = await self.store.read_window(scope.name, after=scope.window.last_id)
            kept = [e for e in entries if e.decided_at >= scope.monitor.window_from]
            scope.window.append(kept)
            scope.window.last_id = entries[-1].id if entries else scope.window.last_id
            if len(entries) < READ_CHUNK:
                break
        fresh = len(scope.window) - before
        scope.new_records += fresh
        drift = await self._watch(scope, start=before, now=now, epoch=epoch) if fresh else None
        min_ms = int((now - self.settings.window_max_age_s) * 1000)
        counted = self._anytime_records(scope)
        trimmed = scope.window.trim(max_records=self.settings.window_size, min_ms=min_ms)
        if trimmed:
            await self.store.trim_window(scope.name, min_id=f"{min_ms}-0", epoch=epoch)
            if scope.config.bound == "anytime" and self._anytime_records(scope) < counted:
                mon = scope.monitor
                mon.anytime_from = policy.anytime_from_after_trim(
                    certified=scope.threshold.status == "certified",
                    segment_from=mon.segment_from, now=now,
                )  # fmt: skip
                await self.store.save_monitor(scope.name, watch.saved_state(mon), epoch=epoch)
        metrics.WINDOW_RECORDS.labels(scope.name).set(len(scope.window))
        return drift, trimmed

    @staticmethod
    def _anytime_records(scope: ScopeState) -> int:
        """Window records the `anytime` e-process counts (all of them until a trim)."""
        return int(np.count_nonzero(scope.window.decided_at >= scope.monitor.anytime_from))

    async def load_monitor(self, scope: ScopeState) -> None:
        """The monitor's state as the last leader left it (once per epoch)."""
        if not scope.monitor.loaded:
            cfg = scope.config
            state = await self.store.load_monitor(scope.name)
            watch.load_state(scope.monitor, state, alpha=cfg.alpha, aci=cfg.aci_gamma is not None)
            self._begin(scope, new=not state, warm=scope.monitor.window_from == 0.0)

    def _begin(self, scope: ScopeState, *, new: bool, warm: bool) -> None:
        """A scope's window starts from its warm start, else a new scope's is a segment."""
        if scope.config.warm_start is not None and warm:
            scope.window.prepend(warm_start_entries(scope.config.warm_start, scope, self.clock()))
        elif new and self.settings.monitor:
            scope.monitor.segment_from = watch.COLD_START

    async def check_identity(
        self, scope: ScopeState, *, now: float, epoch: int
    ) -> AlertMessage | None:
        """Start the scope anew when its window was recorded under another identity (models
        or router, service/identity.py): its records, pending ones too, are dropped from the
        store, the window and the monitor restart as a new scope's (a segment at lam = 1
        auditing every decision, or the warm start), and an alert says what changed."""
        await self.load_monitor(scope)
        stored, mine = scope.monitor.identity, scope.identity
        if stored.get(identity.FINGERPRINT) == mine.fingerprint:
            return None
        if not stored:  # a new scope, or one stored before identities: record it
            scope.monitor.identity = mine.fields()
            await self.store.save_monitor(scope.name, watch.saved_state(scope.monitor), epoch=epoch)
            return None
        change, what = identity.describe_change(stored, mine), identity.what_changed(stored, mine)
        voided = len(scope.window)
        await self.store.reset_scope(scope.name, epoch=epoch)
        scope.window = WindowCache(len(scope.models))
        scope.monitor = Monitor(loaded=True, identity=mine.fields(), window_from=now)
        scope.new_records, scope.calibrated_at = 0, -np.inf
        self._begin(scope, new=True, warm=True)
        await self.store.save_monitor(scope.name, watch.saved_state(scope.monitor), epoch=epoch)
        log.warning("scope %s changed: %s: its window of %d records is void; routing on every "
                    "model until the decisions from now on certify", scope.name, change,
                    voided)  # fmt: skip
        for part in what:
            metrics.SCOPE_CHANGES.labels(scope.name, part).inc()
        return AlertMessage(
            scope=scope.name, kind="scope_changed", at=now,
            message=f"{change}: the window recorded under the old identity is void; routing "
            "on every model until the decisions from now on certify",
            evidence={"changed": what, "old": dict(stored), "new": mine.fields(),
                      "voided_records": voided},
        )  # fmt: skip

    async def _watch(
        self, scope: ScopeState, *, start: int, now: float, epoch: int
    ) -> AlertMessage | None:
        """Exact outcomes of new window records: realised risk, ACI level, labelled channel."""
        cfg, mon, settings = scope.config, scope.monitor, self.settings
        _, required = await asyncio.to_thread(scope.window_levels, start)  # a new epoch: all
        lam_used = scope.window.lam[start:]
        misses = lam_used < required  # each at the threshold it was decided with
        ids = scope.window.ids[start:]
        mon.recent = np.append(mon.recent, misses)[-settings.n_recent :]
        applied = BEFORE_ANY if mon.last_id is None else StreamId.parse(mon.last_id)
        fresh = np.array([StreamId.parse(i) > applied for i in ids])  # not yet applied
        new = misses[fresh]
        if not new.size:
            return None
        if mon.alpha_t is not None and cfg.aci_gamma is not None:
            mon.alpha_t = core.aci_level(mon.alpha_t, new, alpha=cfg.alpha, gamma=cfg.aci_gamma)
        mon.last_id = ids[-1]
        alarm = watch.watch_labelled(scope, new, lam_used[fresh], settings, now=now)
        await self.store.save_monitor(scope.name, watch.saved_state(mon), epoch=epoch)
        # Counted once stored: a superseded leader's refused look counts nothing.
        metrics.EXACT_OUTCOMES.labels(scope.name).inc(new.size)
        metrics.EXACT_MISSES.labels(scope.name).inc(int(new.sum()))
        metrics.REALISED_MISS_RATE.labels(scope.name).set(float(mon.recent.mean()))
        return alarm

    async def watch_free(self, scope: ScopeState, *, now: float, epoch: int) -> AlertMessage | None:
        """The channels on the store's counters: "every invoked model wrong" of non-audit
        decisions, and, when it is on, the covariate channel of every routed decision."""
        counters = await self.store.upper_bound(scope.name)
        alarm = watch.watch_free(scope, counters, self.settings, now=now)
        if self.settings.monitor_covariate:
            low_tops = await self.store.covariate_counts(scope.name)
            covariate = watch.watch_covariate(scope, low_tops, self.settings, now=now)
            alarm = alarm or covariate
        await self.store.save_monitor(scope.name, watch.saved_state(scope.monitor), epoch=epoch)
        return alarm


def warm_start_entries(path: Path, scope: ScopeState, now: float) -> list[WindowEntry]:
    """Window entries from an offline records file, decided before any live decision."""
    records = read_records(path).fully_graded()
    missing = [m for m in scope.models if m not in records.models]
    if missing:
        raise ConfigError(f"warm start {path}: no column for model {missing[0]!r}")
    columns = [records.models.index(m) for m in scope.models]
    scores = records.scores[:, columns]
    given = records.p_abstain if records.p_abstain is not None else np.full(len(records), np.nan)
    p_abstain = np.where(np.isnan(given), np.prod(1.0 - scores, axis=1), given)
    labels = ["".join(str(int(y)) for y in row) for row in records.labels[:, columns]]
    entered = f"{int(now * 1000)}-0"  # they age out of the window like the records of now
    return [
        WindowEntry(entered, packed, y, core.FALLBACK_LAM, 0.0)
        for packed, y in zip(pack_scores(scores, p_abstain), labels, strict=True)
    ]
