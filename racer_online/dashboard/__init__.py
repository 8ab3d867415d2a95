"""The drift dashboard as one self-contained HTML page: style, script and data inline.

The charts are drawn by uPlot (MIT, vendored unchanged in ``vendor/`` from the npm
package ``uplot`` 1.6.32, with its LICENSE), inlined like the rest. The same page serves
two uses. ``live_page`` is what the worker serves at ``/dashboard``:
the script polls ``api/history`` next to it. ``static_page`` is the report: every scope's
history is embedded and nothing is fetched. A Content-Security-Policy in the page allows
only its own inline script and style (and, live, requests to its own origin).
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import time
from collections.abc import Mapping, Sequence
from importlib.resources import files
from typing import Any

ScopeHistory = Mapping[str, Sequence[Any]]  # {"thresholds": [...], "alerts": [...]}
LIVE_REFRESH_S = 3.0


def live_page(scopes: Sequence[str], *, refresh_s: float = LIVE_REFRESH_S) -> str:
    """The page the worker serves; its script reads ``api/history`` every ``refresh_s``."""
    config = {
        "mode": "live",
        "scopes": list(scopes),
        "refresh_ms": int(refresh_s * 1000),
        "since": 0.0,
        "footer": f"racer-online · refreshes every {refresh_s:g} s",
    }
    return _page(config, title="RACER threshold drift", connect_src="'self'")


def static_page(
    histories: Mapping[str, ScopeHistory],
    *,
    generated_at: float,
    since: float = 0.0,
    phases: Sequence[Mapping[str, Any]] = (),
) -> str:
    """A report page holding every scope's history; it fetches nothing. ``phases`` (name,
    at: when a replay's phase began) are drawn as boundaries on the charts."""
    made = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(generated_at))
    window = (
        f" · history since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}"
        if since > 0
        else ""
    )
    config = {
        "mode": "static",
        "scopes": list(histories),
        "history": {name: history_json(history) for name, history in histories.items()},
        "generated_at": generated_at,
        "since": since,
        "phases": [{"name": str(p["name"]), "at": float(p["at"])} for p in phases],
        "footer": f"racer-online report · generated {made}{window}",
    }
    return _page(config, title=f"RACER threshold drift report {made}", connect_src="'none'")


def login_page(*, refused: bool = False) -> str:
    """The worker's sign-in form: it posts the token to ``login`` (never in a URL)."""
    style = _asset("login.css")
    csp = (f"default-src 'none'; style-src {_sha256(style)}; form-action 'self'; "
           "img-src data:; base-uri 'none'")  # fmt: skip
    fill = {
        "csp": csp,
        "style": style,
        "refused": '<p class="refused" role="alert">That token was refused.</p>' if refused else "",
    }
    return re.sub(r"\{\{(\w+)\}\}", lambda slot: fill[slot.group(1)], _asset("login.html"))


def history_json(history: ScopeHistory) -> dict[str, list[dict[str, Any]]]:
    """A scope's history as the JSON that ``/api/history`` returns."""
    return {
        "thresholds": [t.model_dump(mode="json") for t in history.get("thresholds", ())],
        "alerts": [a.model_dump(mode="json") for a in history.get("alerts", ())],
    }


def _asset(name: str) -> str:
    return files("racer_online.dashboard").joinpath(name).read_text(encoding="utf-8")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _page(config: dict[str, Any], *, title: str, connect_src: str) -> str:
    style, script = _asset("dashboard.css"), _asset("dashboard.js")
    chart_style, chart_script = _asset("vendor/uPlot.min.css"), _asset("vendor/uPlot.iife.min.js")
    csp = (
        f"default-src 'none'; script-src {_sha256(chart_script)} {_sha256(script)}; "
        f"style-src {_sha256(chart_style)} {_sha256(style)}; connect-src {connect_src}; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )
    # JSON inside <script>: a "<" could close the element, so it is escaped.
    data = json.dumps(config, allow_nan=False, separators=(",", ":")).replace("<", "\\u003c")
    fill = {
        "csp": csp,
        "title": html.escape(title),
        "style": style,
        "script": script,
        "chart_style": chart_style,
        "chart_script": chart_script,
        "config": data,
    }
    # One pass, so text inside a filled value (an alert message, say) is never a placeholder.
    return re.sub(r"\{\{(\w+)\}\}", lambda slot: fill[slot.group(1)], _asset("dashboard.html"))
