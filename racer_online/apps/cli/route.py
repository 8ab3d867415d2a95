"""``racer-online route``: what the stream would decide for a query, right now.

It reads the scope's current threshold from Redis and decides with the service's own
code (`RacerService.decide`), offline of the stream: nothing is published or stored.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

import typer
from rich.table import Table

from racer_online.apps.cli.common import JsonOpt, app, fmt, out, plural
from racer_online.errors import InvalidInputError, RacerError
from racer_online.messages import MessageError, QueryMessage
from racer_online.settings import Settings


@app.command()
def route(
    text: Annotated[
        str | None, typer.Argument(help="The query text (scored by RACER_ROUTER_FILE).")
    ] = None,
    scores: Annotated[
        str | None, typer.Option(help='Base-router scores as JSON: {"model": 0.8, ...}.')
    ] = None,
    p_abstain: Annotated[
        float | None, typer.Option(help="The base router's estimate that no model is right.")
    ] = None,
    source: Annotated[
        str | None, typer.Option("--file", help="Queries as JSONL (as publish reads them).")
    ] = None,
    scope: Annotated[str, typer.Option(help="The scope whose threshold decides.")] = "default",
    as_json: JsonOpt = False,
) -> None:
    """The decision, with its certificate, for one query (text or scores) or a JSONL file.

    Decides at the scope's threshold stored in Redis with the worker's own code; publishes
    and stores nothing.
    """
    queries = _queries(text, scores, p_abstain, source, scope)
    settings = Settings.load()
    decided = asyncio.run(_decide(settings, queries))
    rejected = [d for d in decided if "rejected" in d]
    if as_json:
        for d in decided:
            print(json.dumps(d))
    else:
        _show(decided)
    if rejected:
        first = rejected[0]
        raise RacerError(
            f"{plural(len(rejected), 'query', 'queries')} rejected; "
            f"{first['query_id']}: {first['rejected']}"
        )


def _queries(
    text: str | None, scores: str | None, p_abstain: float | None, source: str | None, scope: str
) -> list[QueryMessage]:
    if source is not None:
        if text is not None or scores is not None:
            raise InvalidInputError("give a query (text or --scores) or --file, not both")
        from racer_online.kafka.publishing import read_queries

        return [m for _, m in read_queries(source) if isinstance(m, QueryMessage)]
    if (text is None) == (scores is None):
        raise InvalidInputError("give the query as text or as --scores (one of them)")
    fields: dict[str, Any] = {"query_id": "query", "scope": scope, "p_abstain": p_abstain}
    if scores is not None:
        try:
            fields["scores"] = json.loads(scores)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"--scores is not JSON: {exc.msg}") from None
    else:
        fields["text"] = text
    try:
        return [QueryMessage.parse(json.dumps(fields))]
    except MessageError as exc:
        raise InvalidInputError(f"the query: {exc.reason}") from None


async def _decide(settings: Settings, queries: list[QueryMessage]) -> list[dict[str, Any]]:
    from racer_online.apps.reading import reading_service
    from racer_online.routers.files import load_router
    from racer_online.service.decisions import Rejected

    router = load_router(settings.router_file) if settings.router_file else None
    async with reading_service(settings, router=router) as service:
        results = service.decide(queries)
    return [
        {"query_id": q.query_id, "scope": q.scope, "rejected": r.reason}
        if isinstance(r, Rejected)
        else dict(r.fields)
        for q, r in zip(queries, results, strict=True)
    ]


def _show(decided: list[dict[str, Any]]) -> None:
    table = Table("query", "scope", "set", "flag", "status", "lam", "v", "alpha", "delta",
                  "bound", title="RACER decisions (current stored thresholds)")  # fmt: skip
    for d in decided:
        if "rejected" in d:
            table.add_row(d["query_id"], d["scope"], f"rejected: {d['rejected']}",
                          *("",) * 7)  # fmt: skip
            continue
        chosen = ", ".join(d["models"]) or "(abstain)"
        table.add_row(d["query_id"], d["scope"], chosen,
                      "unanswerable" if d["flag_unanswerable"] else "", d["threshold_status"],
                      fmt(d["lam"]), str(d["threshold_version"]), fmt(d["alpha"]),
                      fmt(d["delta"]), d["bound"])  # fmt: skip
    out.print(table)
