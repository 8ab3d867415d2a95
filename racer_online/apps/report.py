"""``racer-online report``: the drift charts as a self-contained HTML file and PNG images.

`write_report` reads the history from Redis; `save_report`, `drift_figure` and `chart_png`
are pure functions of the history, so they are tested without Redis.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from racer_online.dashboard import ScopeHistory, static_page
from racer_online.errors import InvalidInputError
from racer_online.messages import AlertMessage, ThresholdMessage
from racer_online.settings import Settings

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.ticker import Formatter

Times = NDArray[np.datetime64]
REPORT_NAME = "report.html"
STATUS_COLOURS = {"certified": "#16a34a", "stale": "#d97706", "fallback": "#dc2626"}
ALERT_COLOURS = {"drift": "#dc2626", "risk_violation": "#ea580c", "stale_calibration": "#9ca3af",
                 "scope_changed": "#7c3aed"}  # fmt: skip


def write_report(
    settings: Settings,
    out_dir: Path | str,
    *,
    scopes: Sequence[str] | None = None,
    since: float = 0.0,
    phases: Sequence[Mapping[str, Any]] = (),
) -> list[Path]:
    """Read each scope's history from Redis and write the report; return the files written.
    ``phases`` (name, at) mark where a replay's phases began, on the charts."""
    from racer_online.apps.reading import load_history

    names = list(scopes) if scopes else list(settings.scopes)
    unknown = [name for name in names if name not in settings.scopes]
    if unknown:
        raise InvalidInputError(f"unknown scope {unknown[0]!r}")
    histories = asyncio.run(load_history(settings, names, since=since))
    return save_report(
        histories, Path(out_dir), generated_at=time.time(), since=since, phases=phases
    )


def save_report(
    histories: Mapping[str, ScopeHistory],
    out_dir: Path,
    *,
    generated_at: float,
    since: float = 0.0,
    phases: Sequence[Mapping[str, Any]] = (),
) -> list[Path]:
    """``report.html`` (every scope, data inline) and one ``<scope>.png`` per scope."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidInputError(f"cannot create {out_dir}: {exc.strerror}") from None
    page = out_dir / REPORT_NAME
    page.write_text(
        static_page(histories, generated_at=generated_at, since=since, phases=phases), "utf-8"
    )
    written = [page]
    for name, history in histories.items():
        image = out_dir / f"{name}.png"
        image.write_bytes(chart_png(name, history))
        written.append(image)
    return written


def chart_png(scope: str, history: ScopeHistory, *, dpi: int = 100) -> bytes:
    """The scope's drift figure as PNG bytes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = drift_figure(scope, history)
    FigureCanvasAgg(figure)  # attaches itself: no pyplot, no global state
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def drift_figure(scope: str, history: ScopeHistory) -> Figure:
    """λ, realised miss rate against α, set size and abstention over time, alerts marked."""
    from matplotlib.figure import Figure

    thresholds: Sequence[ThresholdMessage] = history.get("thresholds", ())
    alerts: Sequence[AlertMessage] = history.get("alerts", ())
    figure = Figure(figsize=(10, 9), layout="constrained")
    lam, risk, size, abstain = figure.subplots(
        4, 1, sharex=True, gridspec_kw={"height_ratios": [3, 3, 2, 2]}
    )
    figure.suptitle(f"RACER threshold drift · scope {scope}", fontsize=13, x=0.01, ha="left")
    times = _datetimes([t.computed_at for t in thresholds])
    if not thresholds:
        lam.text(0.5, 0.5, "no recalibration recorded", ha="center", va="center",
                 transform=lam.transAxes, color="#6b7280")  # fmt: skip
    _lam_panel(lam, times, thresholds)
    _risk_panel(risk, times, thresholds)
    sizes, abstentions = [t.mean_set_size for t in thresholds], [t.abstain_rate for t in thresholds]
    _line_panel(size, times, sizes, "mean set size", "#0d9488", top=1.0)
    _line_panel(abstain, times, abstentions, "abstention", "#475569", top=0.05)
    abstain.yaxis.set_major_formatter(_percent())
    for axes in (lam, risk, size, abstain):
        _style(axes)
        for alert, at in zip(alerts, _datetimes([a.at for a in alerts]), strict=True):
            dotted = alert.kind == "stale_calibration"
            axes.axvline(at, color=ALERT_COLOURS.get(alert.kind), linewidth=1.2,
                         linestyle=":" if dotted else "-")  # fmt: skip
    for kind in sorted({a.kind for a in alerts}):
        lam.plot([], [], color=ALERT_COLOURS.get(kind), label=f"{kind.replace('_', ' ')} alert")
    if thresholds or alerts:
        lam.legend(loc="upper left", fontsize=8, frameon=False, ncols=6)
    _time_axis(abstain)
    return figure


def _lam_panel(axes: Axes, times: Times, thresholds: Sequence[ThresholdMessage]) -> None:
    if times.size:
        axes.step(times, [t.lam for t in thresholds], where="post", color="#2563eb", label="λ")
        colours = [STATUS_COLOURS.get(t.status, "#2563eb") for t in thresholds]
        axes.scatter(times, [t.lam for t in thresholds], c=colours, s=14, zorder=3)
        for status in sorted({t.status for t in thresholds}):
            axes.scatter([], [], color=STATUS_COLOURS.get(status), s=14, label=status)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("threshold λ")


def _risk_panel(axes: Axes, times: Times, thresholds: Sequence[ThresholdMessage]) -> None:
    def value(x: float | None) -> float:
        return float("nan") if x is None else x  # a gap in the line

    if times.size:
        low = [value(t.realised_low) for t in thresholds]
        high = [value(t.realised_high) for t in thresholds]
        axes.fill_between(times, low, high, color="#d97706", alpha=0.18, linewidth=0,
                          label="95% interval")  # fmt: skip
        axes.plot(times, [value(t.realised_miss_rate) for t in thresholds], color="#d97706",
                  marker="o", markersize=3, label="realised miss rate")  # fmt: skip
        alpha = thresholds[-1].alpha
        axes.axhline(alpha, color="#dc2626", linestyle="--", linewidth=1.2, label=f"α = {alpha:g}")
        if any(t.alpha_t is not None for t in thresholds):
            axes.step(times, [value(t.alpha_t) for t in thresholds], where="post",
                      color="#7c3aed", linestyle=":", label="α_t (ACI)")  # fmt: skip
        axes.legend(loc="upper left", fontsize=8, frameon=False, ncols=4)
    axes.set_ylim(bottom=0)
    axes.yaxis.set_major_formatter(_percent())
    axes.set_ylabel("miss rate")


def _line_panel(axes: Axes, times: Times, values: list[float | None], label: str,
                colour: str, *, top: float) -> None:  # fmt: skip
    """``top``: the least top of the value axis, so a flat line does not fill the panel."""
    present = np.array([v is not None for v in values], dtype=bool)
    if present.any():
        shown = np.array([v for v in values if v is not None])
        axes.plot(times[present], shown, color=colour, marker="o", markersize=2.5)
        top = max(top, float(shown.max()) * 1.15)
    axes.set_ylim(0, top)
    axes.set_ylabel(label)


def _style(axes: Axes) -> None:
    axes.grid(True, color="#e5e7eb", linewidth=0.8)
    axes.set_axisbelow(True)
    for side in ("top", "right"):
        axes.spines[side].set_visible(False)


def _percent() -> Formatter:
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(xmax=1.0)


def _time_axis(axes: Axes) -> None:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter

    locator = AutoDateLocator()  # type: ignore[no-untyped-call]
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(ConciseDateFormatter(locator))  # type: ignore[no-untyped-call]


def _datetimes(unix_seconds: Sequence[float]) -> Times:
    """Local wall-clock times, as the dashboard shows them."""
    return np.array([datetime.fromtimestamp(t) for t in unix_seconds], dtype="datetime64[ms]")
