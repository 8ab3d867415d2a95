"""The drift dashboard in a real headless Chromium, on a real worker, broker and Redis.

A short replay drives one scope through a drift (the models' accuracies flip mid-stream);
the page served at /dashboard, behind the worker's token (the browser signs in through the
login form; the token never appears in a URL), must then chart one point per stored
threshold and mark the drift alert (uPlot draws on a canvas: the figures say what they were
handed; the screenshots show what was drawn). The system's Chromium is driven by Playwright
(no browser download). Screenshots go to artifacts/ for a person to look at.
"""

import json
import os
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from playwright.async_api import async_playwright

from racer_online.apps.reading import load_history
from racer_online.apps.report import save_report
from racer_online.messages import AlertMessage, ThresholdMessage
from racer_online.settings import Settings
from racer_online.store import RedisStore, StoreConfig, keys
from racer_online.testing import LocalDeployment, until

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"  # the system's: no browser download (never `playwright install`)
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
MODELS = ("m0", "m1", "m2")
LAM_POINTS = "Number(document.getElementById('chart-lam').dataset.points)"
TOKEN = "a-dashboard-token-for-this-test"

needs_chromium = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK), reason="Chromium missing: .ci/run installs it"
)


# -- the browser ---------------------------------------------------------------------------


class Chromium:
    """One headless Chromium page, driven by Playwright; collects the page's errors."""

    async def __aenter__(self):
        self.playwright = await async_playwright().start()
        try:
            self.browser = await self.playwright.chromium.launch(
                executable_path=CHROMIUM, args=CHROMIUM_ARGS
            )
            self.page = await self.browser.new_page(viewport={"width": 1280, "height": 1000})
        except BaseException:
            await self.playwright.stop()
            raise
        self.found: list[str] = []
        self.visited: list[str] = []  # every URL the page asked for
        self.page.on("request", lambda request: self.visited.append(request.url))
        self.page.on("pageerror", lambda error: self.found.append(str(error)))
        self.page.on("console", lambda m: self.found.append(m.text) if m.type == "error" else None)
        return self

    async def __aexit__(self, *exc):
        await self.browser.close()
        await self.playwright.stop()

    async def open(self, url):
        self.found.clear()
        await self.page.goto(url)

    async def sign_in(self, token):
        """Type the token into the login form and send it (a POST: never in a URL)."""
        await self.page.fill("#token", token)
        async with self.page.expect_navigation():
            await self.page.click("button[type=submit]")

    async def evaluate(self, expression):
        return await self.page.evaluate(expression)

    async def screenshot(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        await self.page.screenshot(path=str(path), full_page=True)

    def errors(self):
        """Script exceptions and console errors (CSP violations and failed loads among them)."""
        return list(self.found)


# -- a worker on the session's broker and Redis ----------------------------------------------


class Replay(LocalDeployment):
    """One worker with a drift-sensitive monitor, on topics and a scope of the test's own."""

    def __init__(self, broker, redis_url, scope, tmp_path):
        super().__init__(
            broker_url=broker.url, bootstrap=broker.bootstrap, redis_url=redis_url,
            directory=tmp_path, scope=scope, replication=broker.replication,
            embedded_broker=False,  # the broker's own env() says which fetch wait it needs
            env=broker.env() | {
                "RACER_AUDIT_RATE": "1.0", "RACER_RECALIBRATE_INTERVAL_S": "1",
                "RACER_RECALIBRATE_EVERY_RECORDS": "50", "RACER_N_RECENT": "50",
                "RACER_WEB_TOKEN": TOKEN,
            },
        )  # fmt: skip
        self.write_scopes(MODELS, alpha=0.1, delta=0.1)
        self.settings = Settings(_env_file=None, redis_url=redis_url, scopes_file=self.scopes_file)
        self.redis = aioredis.Redis.from_url(redis_url)
        self.sent = 0

    @property
    def url(self):
        return f"http://127.0.0.1:{self.web_ports[0]}"

    async def start(self):
        await self.create_topics()
        self.start_worker()
        await self.wait_answering(0)

    async def close(self):
        self.stop()
        await self.redis.aclose()

    async def chunk(self, rng, n, *, flipped):
        """Route ``n`` queries with their labels; return once a threshold counts them."""
        ids = [f"q{self.sent + i}" for i in range(n)]
        self.sent += n
        scores = np.tile([0.8, 0.15, 0.05], (n, 1)) + rng.uniform(0, 0.02, (n, 3))
        accuracy = [0.05, 0.3, 0.9] if flipped else [0.95, 0.3, 0.1]
        correct = rng.uniform(size=(n, 3)) < np.array(accuracy)
        before = await self.redis.xlen(keys.history(self.scope))
        scope = self.scope
        rows = [dict(zip(MODELS, s.round(4).tolist(), strict=True)) for s in scores]
        labels = [dict(zip(MODELS, map(int, y), strict=True)) for y in correct]
        queries = [
            {"query_id": q, "scope": scope, "scores": r} for q, r in zip(ids, rows, strict=True)
        ]
        graded = [
            {"query_id": q, "scope": scope, "labels": y} for q, y in zip(ids, labels, strict=True)
        ]
        await self.send("queries", queries)
        await self.send("feedback", graded)
        await until(lambda: self._entered(ids), timeout=60, what="the records to enter")
        await until(lambda: self._history_longer_than(before), timeout=30, what="a recalibration")

    async def send(self, topic, values):
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, linger_ms=5)
        await producer.start()
        try:
            for value in values:
                await producer.send(
                    self.topics[topic], json.dumps(value).encode(), key=value["query_id"].encode()
                )
            await producer.flush()
        finally:
            await producer.stop()

    async def _entered(self, ids):
        config = StoreConfig({self.scope: MODELS}, pending_ttl_s=86_400, window_size=10**4)
        found = await RedisStore(self.redis, config).pending_records(self.scope, ids)
        return all(got is not None and got[1].entered for got in found)

    async def _history_longer_than(self, length):
        return await self.redis.xlen(keys.history(self.scope)) > length

    async def history(self):
        found = await load_history(self.settings, [self.scope])
        return found[self.scope]


@pytest.fixture
async def replay(broker, redis_url, redis_ns, tmp_path):
    made = Replay(broker, redis_url, redis_ns, tmp_path)
    try:
        await made.start()
        yield made
    finally:
        await made.close()


# -- the tests -----------------------------------------------------------------------------


@needs_chromium
async def test_dashboard_charts_a_live_drift(replay, tmp_path):
    rng = np.random.default_rng(7)
    for _ in range(4):  # calm traffic: the threshold gets certified
        await replay.chunk(rng, 100, flipped=False)
    assert (await replay.history())["thresholds"][-1].status == "certified"
    for _ in range(8):  # the accuracies flip: the drift test fires within a few chunks
        await replay.chunk(rng, 50, flipped=True)
        if (await replay.history())["alerts"]:
            break
    for _ in range(2):  # the window restarts from the recent segment and refills
        await replay.chunk(rng, 50, flipped=True)
    stored = await replay.history()
    assert any(a.kind == "drift" for a in stored["alerts"]), replay.log()

    async with aiohttp.ClientSession() as http:
        async with http.get(f"{replay.url}/dashboard") as refused:
            assert refused.status == 401 and "Bearer" in refused.headers["WWW-Authenticate"]
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        async with http.get(f"{replay.url}/dashboard", headers=bearer) as served:
            assert served.status == 200, f"GET /dashboard: {served.status}"
            assert served.content_type == "text/html"
    async with Chromium() as browser:
        await browser.open(f"{replay.url}/dashboard")  # no session yet: the login form
        assert browser.page.url == f"{replay.url}/login"
        await browser.sign_in("a-wrong-token")
        assert await browser.page.get_by_role("alert").inner_text() == "That token was refused."
        await browser.sign_in(TOKEN)
        assert browser.page.url.startswith(f"{replay.url}/dashboard")  # ?scope=, the page sets
        assert TOKEN not in "".join(browser.visited)

        async def page_matches_redis():
            stored = await replay.history()  # re-read: a late recalibration may still land
            drawn = await browser.evaluate(LAM_POINTS)
            return drawn == len(stored["thresholds"]) and stored

        stored = await until(page_matches_redis, timeout=60, what="the chart to match Redis")
        drawn = await browser.evaluate("""({
            lam: document.getElementById('chart-lam').dataset.points,
            miss: Number(document.getElementById('chart-risk').dataset.points),
            alpha: Number(document.getElementById('chart-risk').dataset.rules),
            drift: Number(document.getElementById('chart-lam').dataset.driftMarkers),
            canvases: document.querySelectorAll('.chart canvas').length,
            alertRows: document.querySelectorAll('#alert-table .alert-row').length,
            models: [...document.querySelectorAll('#model-table .model-row')]
                .map((row) => [...row.cells].map((cell) => cell.textContent)),
            state: document.body.dataset.state,
            summary: document.getElementById('summary').textContent,
        })""")
        await browser.screenshot(ARTIFACTS / "dashboard.png")
        errors = browser.errors()

    thresholds, alerts = stored["thresholds"], stored["alerts"]
    assert int(drawn["lam"]) == len(thresholds) >= 6
    assert drawn["miss"] == sum(t.realised_miss_rate is not None for t in thresholds)
    assert drawn["alpha"] == 1 and drawn["state"] == "ready"
    assert drawn["drift"] == sum(a.kind == "drift" for a in alerts) >= 1
    assert drawn["alertRows"] == len(alerts)
    # One uPlot canvas per chart; the abstention chart only when something abstained.
    assert drawn["canvases"] == 3 + any((t.abstain_rate or 0) > 0 for t in thresholds)
    assert f"{thresholds[-1].lam:.3f}" in drawn["summary"]
    shown = {model: (in_set, share) for model, in_set, share in drawn["models"]}
    per_model = thresholds[-1].per_model
    assert set(shown) == set(MODELS) == set(per_model)
    for model, figures in per_model.items():
        assert shown[model] == (f"{100 * figures['in_set_rate']:.1f}%",
                                f"{100 * figures['price_share']:.1f}%")  # fmt: skip
    assert errors == []


def _threshold(scope, version, lam, status="certified", abstain_rate=0.01):
    return ThresholdMessage(
        scope=scope, version=version, lam=lam, status=status, certified=status == "certified",
        n=100, alpha=0.1, delta=0.1, bound="binomial", rule="cumulative", miss="answerable",
        m_star=5, mean_set_size=1.5, abstain_rate=abstain_rate, reason="records", realised_n=50,
        realised_miss_rate=0.08, realised_low=0.02, realised_high=0.19,
        computed_at=1_800_000_000.0 + 10 * version,
    )  # fmt: skip


@needs_chromium
async def test_report_page_draws_every_scope_offline(tmp_path):
    alert = AlertMessage(scope="drifting", kind="drift", at=1_800_000_030.0, message="drift")
    histories = {
        "calm": {  # never abstained: no abstention panel, no abstention card
            "thresholds": [_threshold("calm", v, 0.4, abstain_rate=0.0) for v in range(1, 13)],
            "alerts": [],
        },
        "drifting": {
            "thresholds": [_threshold("drifting", v, 0.3 + 0.05 * v) for v in range(1, 6)],
            "alerts": [alert],
        },
    }
    phases = [
        {"name": "knowledge QA", "at": 1_800_000_005.0},
        {"name": "hard", "at": 1_800_000_060.0},
    ]
    [page, *_] = save_report(
        histories, tmp_path / "report", generated_at=1_800_000_100.0, phases=phases
    )
    async with Chromium() as browser:
        await browser.open(page.as_uri())
        await until(lambda: _count(browser, 12), timeout=30, what="the first scope's chart")
        boundaries = "document.getElementById('chart-lam').dataset.phaseMarkers"
        assert await browser.evaluate(boundaries) == "2"  # where the replay's phases began
        text = await browser.evaluate("document.body.innerText")
        assert " ago" not in text  # a static page is read later: times, never ages
        assert await browser.evaluate("document.getElementById('chart-abstain').hidden")
        assert "abstention" not in await browser.evaluate(
            "document.getElementById('summary').innerText"
        )
        await browser.evaluate("""(() => {
            const select = document.getElementById('scope-select');
            select.value = 'drifting';
            select.dispatchEvent(new Event('change'));
        })()""")
        assert await until(lambda: _count(browser, 5), timeout=10, what="the second scope")
        assert not await browser.evaluate("document.getElementById('chart-abstain').hidden")
        markers = await browser.evaluate(
            "Number(document.getElementById('chart-lam').dataset.alertMarkers)"
        )
        await browser.screenshot(ARTIFACTS / "report.png")
        assert markers == 1 and browser.errors() == []


async def _count(browser, expected):
    return await browser.evaluate(LAM_POINTS) == expected
