"""``racer-online monitor``: a live terminal view of each scope's threshold drift.

It reads Redis only (the threshold history and the alerts), so it works against any running
deployment. `build_frame` is a pure function of the histories and the time; `run_monitor`
reads Redis and redraws it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import termios
import time
import tty
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from racer_online.errors import InvalidInputError, StoreUnavailableError
from racer_online.messages import AlertMessage, ThresholdMessage
from racer_online.settings import Settings

ScopeHistory = Mapping[str, Sequence[Any]]  # {"thresholds": [...], "alerts": [...]}
BLOCKS = "▁▂▃▄▅▆▇█"
SPARK_WIDTH = 60
RECENT_ALERTS = 5
MODEL_ROWS = 12
STATUS_STYLE = {"certified": "bold green", "stale": "bold yellow", "fallback": "bold red"}
ALERT_STYLE = {"drift": "bold red", "risk_violation": "bold red", "stale_calibration": "yellow",
               "scope_changed": "bold magenta"}  # fmt: skip


def sparkline(values: Sequence[float | None], *, width: int = SPARK_WIDTH) -> str:
    """The last ``width`` values as block characters scaled to their own range; gaps blank."""
    shown = list(values)[-width:]
    present = [v for v in shown if v is not None]
    if not present:
        return ""
    low, high = min(present), max(present)
    top = len(BLOCKS) - 1
    return "".join(
        " "
        if v is None
        else BLOCKS[top // 2 if high == low else round((v - low) / (high - low) * top)]
        for v in shown
    )


def alert_marks(
    thresholds: Sequence[ThresholdMessage],
    alerts: Sequence[AlertMessage],
    *,
    width: int = SPARK_WIDTH,
) -> str:
    """A line under the sparkline with ``▲`` at the first threshold computed at or after
    each alert (a drift alert and its recalibration share a time)."""
    shown = list(thresholds)[-width:]
    marks = [" "] * len(shown)
    for alert in alerts:
        for i, threshold in enumerate(shown):
            if threshold.computed_at >= alert.at:
                marks[i] = "▲"
                break
    return "".join(marks).rstrip()


def build_frame(
    histories: Mapping[str, ScopeHistory],
    now: float,
    *,
    max_age_s: float | None = None,
    error: str | None = None,
    spark_width: int = SPARK_WIDTH,
) -> RenderableType:
    """One frame: a panel per scope. ``max_age_s`` flags a last update older than that;
    ``spark_width`` is how many recalibrations the sparkline shows."""
    title = Text.assemble(
        ("RACER threshold monitor", "bold"),
        f"  ·  {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(now))}",
    )
    parts: list[RenderableType] = [title]
    if error:
        parts.append(Text(f"not updating: {error}", style="bold red"))
    parts += [
        scope_panel(name, history, now, max_age_s=max_age_s, spark_width=spark_width)
        for name, history in histories.items()
    ]
    return Group(*parts)


def scope_panel(
    name: str,
    history: ScopeHistory,
    now: float,
    *,
    max_age_s: float | None = None,
    spark_width: int = SPARK_WIDTH,
) -> Panel:
    thresholds: Sequence[ThresholdMessage] = history.get("thresholds", ())
    alerts: Sequence[AlertMessage] = history.get("alerts", ())
    if not thresholds:
        body: RenderableType = Text("no threshold recorded yet", style="dim")
        return Panel(body, title=f"[bold]{name}[/]", title_align="left")
    last = thresholds[-1]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="dim", no_wrap=True)
    grid.add_column(no_wrap=True)
    for label, value in _rows(thresholds, alerts, now, max_age_s=max_age_s, width=spark_width):
        grid.add_row(label, value)
    parts: list[RenderableType] = [grid]
    if last.per_model:
        parts += [Text(), model_table(last.per_model)]
    if alerts:
        parts += [Text(), Text("recent alerts", style="dim"), _recent_alerts(alerts)]
    status = Text(last.status, style=STATUS_STYLE.get(last.status, "bold"))
    title = Text.assemble((name, "bold"), "  ", status, f"  v{last.version}")
    return Panel(Group(*parts), title=title, title_align="left")


def _rows(
    thresholds: Sequence[ThresholdMessage],
    alerts: Sequence[AlertMessage],
    now: float,
    *,
    max_age_s: float | None,
    width: int,
) -> list[tuple[str, Text | str]]:
    last = thresholds[-1]
    lams = [t.lam for t in thresholds]
    shown = lams[-width:]
    lam_line = Text.assemble(
        (f"{last.lam:.4f}  ", "bold"),
        (sparkline(lams, width=width), "cyan"),
        (f"  {min(shown):.3f} … {max(shown):.3f} over the last {len(shown)}", "dim"),
    )
    rows: list[tuple[str, Text | str]] = [("λ", lam_line)]
    marks = alert_marks(thresholds, alerts, width=width)
    if marks:
        rows.append(("alerts", Text(" " * 8 + marks, style="red")))
    alpha = f"{last.alpha:g}" + (f"   α_t {last.alpha_t:.4f}" if last.alpha_t is not None else "")
    rows += [
        ("α", f"{alpha}   δ {last.delta:g}"),
        ("realised", _realised(last)),
        ("set size", _value(last.mean_set_size, "{:.2f}")),
        *(  # only where it happened: a row of zeros says nothing
            [("abstention", _value(last.abstain_rate, "{:.1%}"))]
            if any((t.abstain_rate or 0) > 0 for t in thresholds) else []
        ),
        ("window", f"n {last.n}   m* {last.m_star}   empirical risk "
                   f"{_value(last.empirical_risk, '{:.1%}')}"),
        ("updated", _age(now - last.computed_at, last.reason, max_age_s)),
    ]  # fmt: skip
    return rows


def model_table(per_model: Mapping[str, Mapping[str, float]]) -> Table:
    """Per model, on the window at the current threshold: share of sets that hold it and
    its share of the price; the most used first, at most `MODEL_ROWS` of them."""
    table = Table("model", "in set", "price share", box=None, padding=(0, 2), header_style="dim")
    ranked = sorted(per_model.items(), key=lambda item: -item[1].get("in_set_rate", 0.0))
    for model, figures in ranked[:MODEL_ROWS]:
        table.add_row(model, _value(figures.get("in_set_rate"), "{:.1%}"),
                      _value(figures.get("price_share"), "{:.1%}"))  # fmt: skip
    if len(ranked) > MODEL_ROWS:
        table.add_row(Text(f"+{len(ranked) - MODEL_ROWS} more", style="dim"), "", "")
    return table


def _realised(last: ThresholdMessage) -> Text:
    rate = last.realised_miss_rate
    if rate is None or last.realised_low is None or last.realised_high is None:
        return Text("no audited outcome yet", style="dim")
    style = "bold red" if last.realised_low > last.alpha else "yellow" if rate > last.alpha else ""
    return Text.assemble(
        (f"{rate:.1%}", style or "bold"),
        f"   95% [{last.realised_low:.1%}, {last.realised_high:.1%}]   n {last.realised_n}",
    )


def _age(age_s: float, reason: str, max_age_s: float | None) -> Text:
    old = max_age_s is not None and age_s > max_age_s
    return Text.assemble((_duration(age_s) + " ago", "bold red" if old else ""), f"   ({reason})")


def _recent_alerts(alerts: Sequence[AlertMessage]) -> Table:
    table = Table.grid(padding=(0, 2))
    table.add_column(style="dim", no_wrap=True)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for alert in list(alerts)[-RECENT_ALERTS:][::-1]:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(alert.at))
        table.add_row(at, Text(alert.kind, style=ALERT_STYLE.get(alert.kind, "")), alert.message)
    return table


def _value(value: float | None, form: str) -> str:
    return "–" if value is None else form.format(value)


def _duration(seconds: float) -> str:
    s = max(0.0, seconds)
    if s < 90:
        return f"{s:.0f} s"
    if s < 5400:
        return f"{s / 60:.0f} min"
    if s < 172_800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def run_monitor(
    settings: Settings, *, scope: str | None = None, refresh_s: float = 1.0, once: bool = False
) -> None:
    """Draw the monitor until ``q`` or Ctrl-C (``once``: print one frame and return); off a
    terminal, print the frame once as plain text, then one line per update."""
    if scope is not None and scope not in settings.scopes:
        raise InvalidInputError(f"unknown scope {scope!r}")
    if not refresh_s > 0:
        raise InvalidInputError(f"--refresh must be > 0 seconds, got {refresh_s}")
    names = [scope] if scope else list(settings.scopes)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a monitor ends
        asyncio.run(_monitor(settings, names, refresh_s=refresh_s, once=once))


async def _monitor(settings: Settings, names: list[str], *, refresh_s: float, once: bool) -> None:
    from racer_online.apps.reading import reading_service

    console = Console()
    limit = settings.threshold_max_age_s

    def frame(histories: Mapping[str, ScopeHistory], error: str | None = None) -> RenderableType:
        width = max(12, min(SPARK_WIDTH, console.width - 60))  # the rest of the row fits
        return build_frame(histories, time.time(), max_age_s=limit, error=error, spark_width=width)

    async with reading_service(settings) as service:

        async def read() -> dict[str, ScopeHistory]:
            return {name: await service.history(name) for name in names}

        histories = await read()
        if once or not console.is_terminal:  # a pipe or a file: plain text, never redrawn
            console.print(frame(histories))
            console.file.flush()
            if not once:
                await _print_updates(console, read, histories, refresh_s=refresh_s)
            return
        with (
            Live(frame(histories), console=console, auto_refresh=False) as live,
            _q_pressed() as stop,
        ):
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), refresh_s)
                error = None
                try:
                    histories = await read()
                except StoreUnavailableError as exc:
                    error = str(exc)  # keep the last frame's data, say why it is old
                live.update(frame(histories, error), refresh=True)


async def _print_updates(
    console: Console, read: Callable[[], Awaitable[dict[str, ScopeHistory]]],
    histories: Mapping[str, ScopeHistory], *, refresh_s: float,
) -> None:  # fmt: skip
    """Off a terminal, after the snapshot: one line per new threshold or alert, as it comes."""
    seen = {name: _last_seen(h) for name, h in histories.items()}
    while True:
        await asyncio.sleep(refresh_s)
        try:
            histories = await read()
        except StoreUnavailableError as exc:
            _line(console, f"{_clock(time.time())}  not updating: {exc}")
            continue
        for name, history in histories.items():
            version, alert_at = seen.get(name, (0, 0.0))
            for t in history.get("thresholds", ()):
                if t.version > version:
                    _line(console, update_line(t))
            for alert in history.get("alerts", ()):
                if alert.at > alert_at:
                    console.print(
                        f"{_clock(alert.at)}  {name}  alert {alert.kind}: {alert.message}"
                    )
            seen[name] = _last_seen(history)
        console.file.flush()


def update_line(t: ThresholdMessage) -> str:
    """One threshold as one plain line: when, scope, version, status, lam, realised, why."""
    realised = "-" if t.realised_miss_rate is None else f"{t.realised_miss_rate:.1%}"
    return (f"{_clock(t.computed_at)}  {t.scope}  v{t.version} {t.status}  lam {t.lam:.4f}  "
            f"n {t.n}  realised {realised}  ({t.reason})")  # fmt: skip


def _line(console: Console, text: str) -> None:
    console.print(text, soft_wrap=True, markup=False, highlight=False)  # never cut or styled


def _last_seen(history: ScopeHistory) -> tuple[int, float]:
    thresholds, alerts = history.get("thresholds", ()), history.get("alerts", ())
    return (thresholds[-1].version if thresholds else 0, alerts[-1].at if alerts else 0.0)


def _clock(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


@contextlib.contextmanager
def _q_pressed() -> Iterator[asyncio.Event]:
    """``q`` quits: the terminal in cbreak mode (keys arrive unbuffered, unechoed) while the
    monitor runs, restored however it ends; without a terminal on stdin, Ctrl-C only."""
    stop = asyncio.Event()
    if not sys.stdin.isatty():
        yield stop
        return
    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    loop = asyncio.get_running_loop()

    def pressed() -> None:
        if os.read(fd, 32).lower().startswith(b"q"):
            stop.set()

    tty.setcbreak(fd)
    loop.add_reader(fd, pressed)
    try:
        yield stop
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
