"""README "On the request path": its curl, Python client and LiteLLM examples, run as
written against a real worker (only its address and scope name are this test's own)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from racer_online.scopes import load_scopes

pytestmark = pytest.mark.integration
README = Path(__file__).parents[2] / "README.md"


def example(name: str) -> str:
    """The block after ``<!-- request-path: name -->``: indented, or fenced."""
    text = README.read_text()
    after = text.split(f"<!-- request-path: {name} -->\n", 1)[1]
    fenced = re.match(r"```\w*\n(.*?)```", after, re.S)
    if fenced:
        return fenced.group(1)
    lines = []
    for line in after.splitlines():
        if not line.startswith("    "):
            break
        lines.append(line[4:])
    return "\n".join(lines) + "\n"


@pytest.fixture
async def ours(deployment, router_file):
    """The README's text with this deployment's worker address and scope."""
    deployment.write_scopes(load_scopes()["default"].model_names)
    deployment.start_worker(RACER_ROUTER_FILE=str(router_file))
    await deployment.wait_answering()
    url = f"http://127.0.0.1:{deployment.web_ports[0]}"

    def adapt(code: str) -> str:
        return code.replace("http://127.0.0.1:6066", url).replace(
            '"default"', f'"{deployment.scope}"'
        )

    return adapt


async def test_the_curl_example(deployment, ours):
    shell = ours(example("curl"))
    out = subprocess.run(["bash", "-euo", "pipefail", "-c", shell], capture_output=True,
                         text=True, check=True, timeout=60)  # fmt: skip
    decision_text, accepted = out.stdout.split("}{", 1) if "}{" in out.stdout else ("", "")
    decision = json.loads(decision_text + "}")
    assert decision["query_id"] == "q-17" and decision["scope"] == deployment.scope
    assert json.loads("{" + accepted) == {"query_id": "q-17", "accepted": True}


@pytest.mark.parametrize("name", ["python", "litellm"])
async def test_the_python_examples(deployment, ours, tmp_path, name):
    script = tmp_path / f"readme_{name}.py"  # not litellm.py: it would shadow the package
    script.write_text(ours(example(name)))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    printed = out.stdout.strip().splitlines()[-1]
    models = load_scopes()["default"].model_names
    assert printed.split()[0] in models  # the served model is one of the scope's
    # A fresh scope audits every decision: the example's labels reach the feedback topic.
    feedback = await deployment.collect("feedback", len(models))
    assert {m for f in feedback for m in f["labels"]} == set(models)
