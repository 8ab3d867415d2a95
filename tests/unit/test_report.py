"""The static drift report, from a synthetic history: no Redis, no browser."""

import json
import re

import pytest
from PIL import Image

from racer_online.apps.report import chart_png, save_report, write_report
from racer_online.errors import InvalidInputError
from racer_online.messages import AlertMessage, ThresholdMessage
from racer_online.settings import Settings

T0 = 1_800_000_000.0
UPLOT_HOME = "https://github.com/leeoniya/uPlot"  # in the vendored file's licence banner


def threshold(version, *, lam, rate, status="certified", reason="records", scope="default"):
    return ThresholdMessage(
        scope=scope, version=version, lam=lam, status=status, certified=status == "certified",
        n=200, alpha=0.1, delta=0.1, bound="binomial", rule="cumulative", miss="answerable",
        m_star=12, empirical_risk=0.06, mean_set_size=1.0 + lam, abstain_rate=0.02,
        mean_price=0.2, reason=reason, computed_at=T0 + 30 * version, realised_n=200,
        realised_miss_rate=rate, realised_low=max(0.0, rate - 0.04), realised_high=rate + 0.05,
    )  # fmt: skip


def drift_history(scope="default", *, message="61 misses in the last 200: window restarted"):
    """Twenty calm recalibrations, a drift alert with its fallback, then recovery."""
    calm = [threshold(v, lam=0.35, rate=0.07, scope=scope) for v in range(1, 21)]
    drift = threshold(21, lam=1.0, rate=0.3, status="fallback", reason="drift", scope=scope)
    after = [threshold(v, lam=0.8, rate=0.09, scope=scope) for v in range(22, 31)]
    alert = AlertMessage(scope=scope, kind="drift", at=drift.computed_at, message=message)
    return {"thresholds": [*calm, drift, *after], "alerts": [alert]}


def embedded_config(page):
    found = re.search(
        r'<script type="application/json" id="racer-config">(.*?)</script>', page, re.S
    )
    assert found, "the page holds no embedded data"
    return json.loads(found.group(1))


def test_report_writes_one_page_and_one_image_per_scope(tmp_path):
    histories = {"default": drift_history(), "strict": drift_history("strict")}
    written = save_report(histories, tmp_path / "out", generated_at=T0 + 1000)
    assert [p.name for p in written] == ["report.html", "default.png", "strict.png"]
    assert all(p.is_file() and p.stat().st_size > 0 for p in written)
    config = embedded_config(written[0].read_text())
    assert config["mode"] == "static" and config["scopes"] == ["default", "strict"]
    default = config["history"]["default"]
    assert len(default["thresholds"]) == 30 and default["alerts"][0]["kind"] == "drift"


def test_report_page_needs_nothing_from_outside(tmp_path):
    [page, _] = save_report({"default": drift_history()}, tmp_path, generated_at=T0 + 1000)
    text = page.read_text()
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", text, re.I)
    assert not re.search(r"""url\(\s*["']?\s*(?:https?:)?//|@import""", text, re.I)
    # The only address in the page is the chart library's home in its licence banner.
    assert set(re.findall(r"https?://[^\s\"'`)]+", text)) == {UPLOT_HOME}
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', text).group(1)
    assert "default-src 'none'" in csp and "connect-src 'none'" in csp


def test_embedded_text_cannot_close_the_script(tmp_path):
    hostile = "</script><script>alert(1)</script> {{script}}"
    [page, _] = save_report({"default": drift_history(message=hostile)}, tmp_path, generated_at=T0)
    text = page.read_text()
    assert "</script><script>alert(1)" not in text
    assert text.count("<script") == 3  # the data, the chart library, the dashboard script
    assert embedded_config(text)["history"]["default"]["alerts"][0]["message"] == hostile


@pytest.mark.parametrize("history", [drift_history(), {"thresholds": [], "alerts": []}])
def test_chart_png_is_a_readable_image_of_sensible_size(tmp_path, history):
    path = tmp_path / "chart.png"
    path.write_bytes(chart_png("default", history))
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert 800 <= image.width <= 2000 and 600 <= image.height <= 2000
        colours = image.convert("RGB").getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 20  # drawn on, not a blank canvas


def test_unknown_scope_is_one_line_before_any_connection(tmp_path):
    scopes = tmp_path / "scopes.toml"
    scopes.write_text(
        "[scopes.default]\nalpha = 0.1\ndelta = 0.1\n[scopes.default.models]\na = {}\n"
    )
    settings = Settings(_env_file=None, scopes_file=scopes, redis_url="redis://127.0.0.1:1/0")
    with pytest.raises(InvalidInputError, match="unknown scope 'nope'"):
        write_report(settings, tmp_path / "out", scopes=["nope"])
