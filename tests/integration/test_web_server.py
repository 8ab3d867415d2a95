"""A real worker's web server: HTTPS with a certificate made by openssl now, the token on
every endpoint but the probes, and /metrics that never waits for the broker."""

import ssl
import urllib.error
import urllib.request

import pytest

from racer_online.testing import metric_samples, until

pytestmark = pytest.mark.integration
TOKEN = "a-token-for-the-https-test"


def get(url, *, context=None, token=None, timeout=5.0):
    """(status, body) of a GET; urllib's HTTPError is an answer too."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, context=context, timeout=timeout) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()


async def test_https_with_a_token(deployment, certificates):
    deployment.write_scopes(["m0", "m1"])
    deployment.start_worker(
        RACER_WEB_TOKEN=TOKEN, RACER_WEB_TLS_CERT_FILE=str(certificates.cert),
        RACER_WEB_TLS_KEY_FILE=str(certificates.key),
    )  # fmt: skip
    base = f"https://127.0.0.1:{deployment.web_ports[0]}"
    trusting = ssl.create_default_context(cafile=str(certificates.ca))

    def answering():
        assert deployment.workers[0].poll() is None, deployment.log()
        try:
            return get(f"{base}/health", context=trusting)[0] == 200
        except OSError:
            return False

    await until(answering, timeout=60, what="the worker's HTTPS server")
    status, body = get(f"{base}/metrics", context=trusting)
    assert status == 401 and '"title": "Unauthorized"' in body
    status, body = get(f"{base}/metrics", context=trusting, token=TOKEN)
    assert status == 200 and "racer_" in body
    untrusting = ssl.create_default_context(cafile=str(certificates.other_ca))
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        get(f"{base}/health", context=untrusting)
    with pytest.raises((ConnectionError, urllib.error.URLError)):  # no plain HTTP on that port
        get(f"http://127.0.0.1:{deployment.web_ports[0]}/health")


async def test_metrics_answer_from_the_cached_lag_while_the_broker_is_paused(
    fault_deployment, fault_services
):
    """Each scrape used to ask the broker for offsets (up to 5 s per consumer when it does
    not answer); now the worker refreshes the lag on its own schedule."""
    fault_deployment.write_scopes(["m0", "m1"])
    fault_deployment.start_worker(RACER_LAG_REFRESH_S="0.5")
    await fault_deployment.wait_answering(0)
    url = f"http://127.0.0.1:{fault_deployment.web_ports[0]}/metrics"

    def lag_known():
        return metric_samples(get(url)[1], "racer_consumer_lag")

    await until(lag_known, timeout=60, what="the first lag refresh")
    fault_services.broker.pause()  # SIGSTOP: the broker holds every request
    try:
        for _ in range(5):  # a scraper's timeout: far below the 5 s a lag request may wait
            status, body = get(url, timeout=2.0)
            assert status == 200 and metric_samples(body, "racer_consumer_lag")
    finally:
        fault_services.broker.resume()
