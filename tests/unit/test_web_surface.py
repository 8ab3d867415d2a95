"""The worker's HTTP server closed by default: the token gate, problem+json errors, the
dashboard's login form, Faust's own pages off. Each test serves the worker's real aiohttp
application (the one `worker.app.Worker` builds) on a loopback port; nothing is mocked.
A real worker process with HTTPS and a token: tests/integration/test_secured_services.py."""

from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from racer_online.errors import ConfigError
from racer_online.local.services import free_port
from racer_online.settings import Settings
from worker.app import Worker
from worker.http_auth import SESSION_COOKIE
from worker.security import check_web_exposure, listens_beyond_loopback, web_options

TOKEN = "a-test-token-0123456789"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
NOWHERE = f"redis://127.0.0.1:{free_port()}/0"  # no Redis: the views that need it say 503


def settings(**values):
    values = {"redis_url": NOWHERE, "redis_timeout_s": 0.2} | values
    return Settings.load(_env_file=None, **values)


async def serve(**values) -> TestClient:
    worker = Worker(settings(**values))
    worker.app.web.init_server()  # what Faust does when the worker starts
    client = TestClient(TestServer(worker.app.web.web_app))
    await client.start_server()
    return client


@pytest.fixture
async def guarded():
    client = await serve(web_token=TOKEN, web_host="0.0.0.0")
    yield client
    await client.close()


@pytest.mark.parametrize("path", ["/metrics", "/api/history", "/dashboard", "/", "/nowhere"])
async def test_without_the_token_every_endpoint_but_the_probes_is_refused(guarded, path):
    answer = await guarded.get(path, headers={"Accept": "application/json"})
    assert answer.status == 401
    assert answer.headers["WWW-Authenticate"] == 'Bearer realm="racer-online"'
    assert answer.content_type == "application/problem+json"
    body = await answer.json()
    assert body["type"] == "about:blank" and body["title"] == "Unauthorized"
    assert body["status"] == 401 and body["instance"] == path and "bearer token" in body["detail"]


async def test_a_wrong_token_is_refused_as_invalid(guarded):
    for header in ("Bearer wrong", f"Bearer {TOKEN}x", f"Basic {TOKEN}"):
        answer = await guarded.get("/metrics", headers={"Authorization": header})
        assert answer.status == 401, header
        assert answer.headers["WWW-Authenticate"].endswith('error="invalid_token"')


async def test_the_probes_need_no_token_and_the_token_opens_the_rest(guarded):
    assert (await guarded.get("/health")).status == 200
    # Not started here (no broker), so /ready fails on its own, but it is not refused.
    assert (await guarded.get("/ready")).status != 401
    metrics = await guarded.get("/metrics", headers=BEARER)
    assert metrics.status == 200 and "racer_" in await metrics.text()
    page = await guarded.get("/dashboard", headers=BEARER)
    assert page.status == 200 and page.content_type == "text/html"


async def test_faust_default_pages_are_off(guarded):
    for path in ("/router/", "/table/", "/graph/", "/stats/"):
        answer = await guarded.get(path, headers=BEARER)
        assert answer.status == 404, path
        assert answer.content_type == "application/problem+json"


async def test_errors_are_problem_documents(guarded):
    bad = await guarded.get("/api/history?since=soon", headers=BEARER)
    assert bad.status == 400 and bad.content_type == "application/problem+json"
    body = await bad.json()
    assert body["title"] == "Bad Request" and "soon" in body["detail"]
    down = await guarded.get("/api/history", headers=BEARER)  # no Redis there
    assert down.status == 503 and (await down.json())["title"] == "Service Unavailable"
    wrong_method = await guarded.post("/metrics", headers=BEARER)
    assert wrong_method.status == 405


async def test_the_login_form_sets_a_session_and_never_puts_the_token_in_a_url(guarded):
    page = await guarded.get("/dashboard", headers={"Accept": "text/html"},
                             allow_redirects=False)  # fmt: skip
    assert page.status == 303 and page.headers["Location"] == "/login"
    form = await guarded.get("/login")
    assert form.status == 200 and 'method="post"' in await form.text()
    refused = await guarded.post("/login", data={"token": "guess"}, allow_redirects=False)
    assert refused.status == 303 and refused.headers["Location"] == "/login?refused=1"
    assert SESSION_COOKIE not in refused.cookies
    signed_in = await guarded.post("/login", data={"token": TOKEN}, allow_redirects=False)
    assert signed_in.status == 303 and signed_in.headers["Location"] == "/dashboard"
    cookie = signed_in.cookies[SESSION_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict" and TOKEN not in cookie.value
    assert (await guarded.get("/dashboard")).status == 200  # the client keeps the cookie
    assert (await guarded.get("/metrics")).status == 200  # a browser session, as the page
    guarded.session.cookie_jar.clear()
    assert (await guarded.get("/metrics")).status == 401


async def test_on_loopback_without_a_token_the_server_stays_open():
    client = await serve()
    try:
        assert (await client.get("/metrics")).status == 200
        assert (await client.get("/router/")).status == 404  # Faust's pages are off anyway
    finally:
        await client.close()


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "racer.example.internal"])
def test_beyond_loopback_without_a_token_is_refused_in_one_line(host):
    assert listens_beyond_loopback(host)
    with pytest.raises(ConfigError, match="without a token: set RACER_WEB_TOKEN"):
        check_web_exposure(settings(web_host=host))
    check_web_exposure(settings(web_host=host, web_enabled=False))  # nothing listens


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_token(host):
    assert not listens_beyond_loopback(host)
    check_web_exposure(settings(web_host=host))


def test_the_token_comes_from_a_file_and_a_bad_one_is_one_line(tmp_path: Path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    gated = web_options(settings(web_host="0.0.0.0", web_token_file=token_file))
    assert len(gated["web_application_options"]["middlewares"]) == 2  # problems, the gate
    token_file.write_text("\n")
    with pytest.raises(ConfigError, match=r"RACER_WEB_TOKEN_FILE: .* is empty"):
        web_options(settings(web_host="0.0.0.0", web_token_file=token_file))
    with pytest.raises(ConfigError, match=r"RACER_WEB_TOKEN_FILE: .* not found"):
        web_options(settings(web_host="0.0.0.0", web_token_file=tmp_path / "missing"))
    with pytest.raises(ConfigError, match="keep only one"):
        settings(web_token=TOKEN, web_token_file=token_file)


def test_tls_settings_fit_together_and_a_bad_certificate_is_one_line(tmp_path: Path):
    with pytest.raises(ConfigError, match="RACER_WEB_TLS_KEY_FILE: set RACER_WEB_TLS_CERT_FILE"):
        settings(web_tls_key_file=tmp_path / "key.pem")
    not_a_cert = tmp_path / "cert.pem"
    not_a_cert.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="RACER_WEB_TLS_CERT_FILE: cannot load"):
        web_options(settings(web_tls_cert_file=not_a_cert))
