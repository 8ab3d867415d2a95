"""A scope's identity: everything the records of its window depend on.

A window record is a decision's quantised scores and its labels, one per catalogue model:
the scores come from the base router, the labels' positions from the ordered model list.
Read under another model list or router, a record means something else, and a threshold
certified on such records certifies nothing (docs/method.md, section 2, "A window belongs
to one scope identity"). So the identity is fingerprinted, stored with the window (in the
monitor's state) and with every threshold; a worker routes only on a threshold of its own
identity, and a leader that finds another identity stored starts the scope anew
(`WindowSync.check_identity`).

Settings that only change how the same records are read (alpha, delta, the bound, the
rule, the miss definition) do not void the window: a threshold computed under other ones
is not routed on, and the leader recalibrates the window at once.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from racer_online.messages import ThresholdMessage
from racer_online.scopes import ScopeConfig

# The fields of the monitor's state (store) that hold the identity of the window.
FINGERPRINT, MODELS, ROUTER = "identity", "identity_models", "identity_router"
SHORT = 8  # hex digits shown to operators
# The settings a threshold is computed under that leave the records valid.
RECALIBRATING = ("alpha", "delta", "bound", "rule", "miss")


@dataclass(frozen=True)
class ScopeIdentity:
    models: tuple[str, ...]  # in catalogue order: label and score positions follow it
    router: str  # "sha256:<hex>" of the router files, "declared:<version>", or "none"

    @property
    def fingerprint(self) -> str:
        text = json.dumps({"models": list(self.models), "router": self.router})
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def fields(self) -> dict[str, str]:
        """As the monitor's state stores it, with what an operator needs to read a change."""
        return {FINGERPRINT: self.fingerprint, MODELS: json.dumps(list(self.models)),
                ROUTER: self.router}  # fmt: skip


def scope_identity(config: ScopeConfig, router_file_hash: str | None) -> ScopeIdentity:
    """A scope's identity: its models, and the router that scores its queries, which is the
    declared ``router_version`` (clients send scores) or else the router file's hash."""
    if config.router_version is not None:
        router = f"declared:{config.router_version}"
    elif router_file_hash is not None:
        router = f"sha256:{router_file_hash}"
    else:
        router = "none"
    return ScopeIdentity(config.model_names, router)


def router_hash(path: Path | None) -> str | None:
    if path is None:
        return None
    from racer_online.routers.files import router_fingerprint

    return router_fingerprint(path)


def short(fingerprint: str | None) -> str:
    return "-" if not fingerprint else fingerprint[:SHORT]


def what_changed(stored: Mapping[str, str], now: ScopeIdentity) -> list[str]:
    """``models`` and/or ``router``: what differs between a stored identity and ``now``."""
    changed = []
    if stored.get(MODELS) != json.dumps(list(now.models)):
        changed.append("models")
    if stored.get(ROUTER) != now.router:
        changed.append("router")
    return changed or ["identity"]


def describe_change(stored: Mapping[str, str], now: ScopeIdentity) -> str:
    """One line naming what changed, e.g. ``models 9 -> 3 (+a, -b, ...)``."""
    parts = []
    old_models = json.loads(stored.get(MODELS) or "[]")
    if old_models != list(now.models):
        added = [m for m in now.models if m not in old_models]
        removed = [m for m in old_models if m not in now.models]
        detail = ", ".join([f"+{m}" for m in added] + [f"-{m}" for m in removed])
        parts.append(f"models {len(old_models)} -> {len(now.models)} "
                     f"({detail or 'reordered'})")  # fmt: skip
    if stored.get(ROUTER) != now.router:
        parts.append(f"router {stored.get(ROUTER)} -> {now.router}")
    changed = "; ".join(parts) or "identity"
    return f"{changed} (identity {short(stored.get(FINGERPRINT))} -> {short(now.fingerprint)})"


def refusal(threshold: ThresholdMessage, config: ScopeConfig, fingerprint: str) -> str | None:
    """Why a worker must not route on a stored threshold, or None: it was certified for
    another identity (its records are void), or under other settings (recalibrate)."""
    if threshold.scope_id is not None and threshold.scope_id != fingerprint:
        return (f"certified for scope identity {short(threshold.scope_id)}, this worker's "
                f"is {short(fingerprint)}")  # fmt: skip
    changed = [
        f"{name} {getattr(threshold, name)} -> {getattr(config, name)}"
        for name in RECALIBRATING
        if getattr(threshold, name) != getattr(config, name)
    ]
    return ", ".join(changed) or None
