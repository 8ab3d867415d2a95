"""The drift dashboard in a real headless Chromium, on a real worker, broker and Redis.

A short replay drives one scope through a drift (the models' accuracies flip mid-stream);
the page served at /dashboard must then draw one point per stored threshold and mark the
drift alert. Chromium is driven over the DevTools protocol with aiohttp's websocket client.
Screenshots go to artifacts/ for a person to look at.
"""

import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np
import pytest
import redis.asyncio as aioredis
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from racer_online.apps.reading import load_history
from racer_online.apps.report import save_report
from racer_online.local.services import free_port
from racer_online.messages import AlertMessage, ThresholdMessage
from racer_online.settings import Settings
from racer_online.store import keys

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--remote-debugging-port=0", "--window-size=1280,1000",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parents[2] / "artifacts"
MODELS = ("m0", "m1", "m2")
TOPICS = ("queries", "decisions", "feedback", "thresholds", "alerts", "dlq")
LAM_POINTS = "document.querySelectorAll('#chart-lam .lam-point').length"

needs_chromium = pytest.mark.skipif(
    not os.access(CHROMIUM, os.X_OK), reason="Chromium missing: .ci/run installs it"
)


# -- the browser ---------------------------------------------------------------------------


class Chromium:
    """One headless Chromium page, driven over the DevTools protocol."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.events: list[dict] = []
        self._id = 0

    async def __aenter__(self):
        profile = self.workdir / "chromium-profile"
        with open(self.workdir / "chromium.log", "wb") as log:
            self.proc = subprocess.Popen(
                [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.http = aiohttp.ClientSession()
        try:
            port = await until(lambda: _devtools_port(profile), timeout=30, what="DevTools")
            async with self.http.get(f"http://127.0.0.1:{port}/json/list") as response:
                page = next(t for t in await response.json() if t["type"] == "page")
            self.ws = await self.http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
            for domain in ("Page", "Runtime", "Log"):
                await self.call(f"{domain}.enable")
        except BaseException:
            await self.__aexit__()
            raise
        return self

    async def __aexit__(self, *exc):
        await self.http.close()  # closes the websocket too
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    async def call(self, method, **params):
        self._id += 1
        await self.ws.send_json({"id": self._id, "method": method, "params": params})
        while True:
            message = json.loads((await self.ws.receive(timeout=30)).data)
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]
            self.events.append(message)

    async def open(self, url):
        self.events.clear()
        await self.call("Page.navigate", url=url)

    async def evaluate(self, expression):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']['text']}")
        return result["result"].get("value")

    async def screenshot(self, path: Path):
        height = await self.evaluate("document.documentElement.scrollHeight")
        clip = {"x": 0, "y": 0, "width": 1280, "height": height, "scale": 1}
        shot = await self.call(
            "Page.captureScreenshot", format="png", clip=clip, captureBeyondViewport=True
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    def errors(self):
        """Script exceptions, console errors and browser log errors (CSP, network)."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                found.append(params["exceptionDetails"].get("text"))
            elif method == "Runtime.consoleAPICalled" and params.get("type") == "error":
                found.append(str(params.get("args")))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                found.append(params["entry"]["text"])
        return found


def _devtools_port(profile: Path):
    try:
        return int((profile / "DevToolsActivePort").read_text().split()[0])
    except (FileNotFoundError, IndexError, ValueError):
        return None


async def until(probe, *, timeout, what, interval=0.2):
    """Poll ``probe`` (sync or async) until it returns something truthy."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        got = await got if asyncio.iscoroutine(got) else got
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


# -- a worker on the session's broker and Redis ----------------------------------------------


class Replay:
    """One worker with a drift-sensitive monitor, on topics and a scope of the test's own."""

    def __init__(self, broker, redis_url, scope, tmp_path):
        self.bootstrap, self.scope, self.tmp_path = broker.bootstrap, scope, tmp_path
        self.topics = {name: f"{scope}.{name}" for name in TOPICS}
        self.web_port = free_port()
        (tmp_path / "scopes.toml").write_text(
            f"[scopes.{scope}]\nalpha = 0.1\ndelta = 0.1\n[scopes.{scope}.models]\n"
            + "".join(f"{m} = {{ price = 0.1 }}\n" for m in MODELS)
        )
        self.env = os.environ | {
            "RACER_KAFKA_BROKER": broker.url, "RACER_REDIS_URL": redis_url,
            "RACER_APP_ID": f"racer-{scope}", "RACER_SCOPES_FILE": str(tmp_path / "scopes.toml"),
            "RACER_AUDIT_RATE": "1.0", "RACER_RECALIBRATE_INTERVAL_S": "1",
            "RACER_RECALIBRATE_EVERY_RECORDS": "50", "RACER_N_RECENT": "50",
            "RACER_BROKER_SESSION_TIMEOUT_S": "2", "RACER_BROKER_HEARTBEAT_INTERVAL_S": "0.5",
            "RACER_BROKER_REBALANCE_TIMEOUT_S": "2", "RACER_WEB_PORT": str(self.web_port),
            "RACER_TOPICS__PARTITIONS": "4",
        }  # fmt: skip
        self.env |= {f"RACER_TOPICS__{name.upper()}": t for name, t in self.topics.items()}
        self.env |= broker.env()  # the fetch wait this broker needs
        self.settings = Settings(
            _env_file=None, redis_url=redis_url, scopes_file=tmp_path / "scopes.toml"
        )
        self.redis = aioredis.Redis.from_url(redis_url)
        self.worker: subprocess.Popen | None = None
        self.sent = 0

    @property
    def url(self):
        return f"http://127.0.0.1:{self.web_port}"

    async def start(self):
        admin = AIOKafkaAdminClient(bootstrap_servers=self.bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(t, 4, 1) for t in self.topics.values()])
        finally:
            await admin.close()
        with open(self.tmp_path / "worker.log", "wb") as log:
            self.worker = subprocess.Popen(
                [sys.executable, "-m", "racer_online", "worker"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.tmp_path,
            )  # fmt: skip
        await until(self._healthy, timeout=60, what="the worker's web server")

    async def _healthy(self):
        assert self.worker.poll() is None, (self.tmp_path / "worker.log").read_text()
        try:
            async with aiohttp.ClientSession() as http, http.get(f"{self.url}/health") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    async def stop(self):
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
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
        async with self.redis.pipeline(transaction=False) as pipe:
            for q in ids:
                pipe.hget(keys.pending(self.scope, q), "in")
            return all(flag == b"1" for flag in await pipe.execute())

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
        await made.stop()


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
    assert any(a.kind == "drift" for a in stored["alerts"]), (tmp_path / "worker.log").read_text()

    async with aiohttp.ClientSession() as http, http.get(f"{replay.url}/dashboard") as served:
        assert served.status == 200, f"GET /dashboard: {served.status}"
        assert served.content_type == "text/html"
    async with Chromium(tmp_path) as browser:
        await browser.open(f"{replay.url}/dashboard")

        async def page_matches_redis():
            stored = await replay.history()  # re-read: a late recalibration may still land
            drawn = await browser.evaluate(LAM_POINTS)
            return drawn == len(stored["thresholds"]) and stored

        stored = await until(page_matches_redis, timeout=60, what="the chart to match Redis")
        drawn = await browser.evaluate("""({
            lam: document.querySelector('#chart-lam svg').dataset.points,
            miss: document.querySelectorAll('#chart-risk .miss-point').length,
            alpha: document.querySelectorAll('#chart-risk .alpha-line').length,
            drift: document.querySelectorAll('#chart-lam .alert-marker[data-kind=drift]').length,
            alertRows: document.querySelectorAll('#alert-table .alert-row').length,
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
    assert f"{thresholds[-1].lam:.3f}" in drawn["summary"]
    assert errors == []


def _threshold(scope, version, lam, status="certified"):
    return ThresholdMessage(
        scope=scope, version=version, lam=lam, status=status, certified=status == "certified",
        n=100, alpha=0.1, delta=0.1, bound="binomial", rule="cumulative", miss="answerable",
        m_star=5, mean_set_size=1.5, abstain_rate=0.01, reason="records", realised_n=50,
        realised_miss_rate=0.08, realised_low=0.02, realised_high=0.19,
        computed_at=1_800_000_000.0 + 10 * version,
    )  # fmt: skip


@needs_chromium
async def test_report_page_draws_every_scope_offline(tmp_path):
    alert = AlertMessage(scope="drifting", kind="drift", at=1_800_000_030.0, message="drift")
    histories = {
        "calm": {"thresholds": [_threshold("calm", v, 0.4) for v in range(1, 13)], "alerts": []},
        "drifting": {
            "thresholds": [_threshold("drifting", v, 0.3 + 0.05 * v) for v in range(1, 6)],
            "alerts": [alert],
        },
    }
    [page, *_] = save_report(histories, tmp_path / "report", generated_at=1_800_000_100.0)
    async with Chromium(tmp_path) as browser:
        await browser.open(page.as_uri())
        await until(lambda: _count(browser, 12), timeout=30, what="the first scope's chart")
        await browser.evaluate("""(() => {
            const select = document.getElementById('scope-select');
            select.value = 'drifting';
            select.dispatchEvent(new Event('change'));
        })()""")
        assert await until(lambda: _count(browser, 5), timeout=10, what="the second scope")
        markers = await browser.evaluate(
            "document.querySelectorAll('#chart-lam .alert-marker').length"
        )
        await browser.screenshot(ARTIFACTS / "report.png")
        assert markers == 1 and browser.errors() == []


async def _count(browser, expected):
    return await browser.evaluate(LAM_POINTS) == expected
