"""The REST API held to its own OpenAPI by schemathesis (4.x, every check), on a real `fleet serve`.

Every operation runs, admin ones included (the server and its data are this test's own), with
schemathesis's example, coverage and fuzzing phases and a bounded number of cases each. Half the
ids it draws are ones that exist (a registered terminal, its site and model, a template, an
issued licence), so the routes' real work is reached too, not only their 404s.

Left out, and why:
- `GET /api/v1/events` is a server-sent event stream: it never ends, so no response to check.
- the stateful phase: the OpenAPI declares no links between operations to follow.

`ACCEPTED_422` lists the operations where a 422 for schema-valid data is a rule JSON Schema
cannot state, `NOT_INVALID` those where a request schemathesis meant as invalid is not; anywhere
else either fails the test. The test prints the `st` command it ran; its config (with the
tokens) stays in pytest's tmp dir. FLEET_SCHEMATHESIS_SEED picks another seed (default 1).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fleet.server.api import create_app
from fleet.server.settings import Settings
from tests.server.licence_support import lic_body
from tests.services import mosquitto
from tests.services.fleet_server import Running, fleet_serve

ST = Path(sys.executable).parent / "st"
SEED = os.environ.get("FLEET_SCHEMATHESIS_SEED", "1")
#: Cases per operation and phase: ~45 operations in well under a minute on two cores.
MAX_EXAMPLES = 25
TERMINAL, SITE, MODEL, TEMPLATE = "WH-HALL-01", "S1", "kx-a4-ipp", "form-a"

#: (method, path regex, why a schema-valid request may still be refused with a 422 there)
ACCEPTED_422 = [
    ("POST", r"/api/v1/licences", "the USCC's check character, a real date, exp after now"),
    ("PUT", r"/api/v1/config/.*", "service-hours spans in order and not overlapping"),
    ("PUT", r"/api/v1/templates/.*/assignments", "the sites, terminals and versions must exist"),
    ("GET", r"/api/v1/terminals/.*/history", "`from` before `to`"),
]
#: (method, path regex, why a request schemathesis made "invalid" is not invalid on the wire)
NOT_INVALID = [
    # A file part's content is bytes, whatever value was drawn for it: `[true]` is a file too.
    ("POST", r"/api/v1/verify/images", "multipart: any content is a file"),
]


@pytest.fixture
def running(monkeypatch: pytest.MonkeyPatch) -> Iterator[Running]:
    if not mosquitto.available():
        pytest.skip("mosquitto not installed")
    # Outside dev mode /metrics always wants a token; in dev mode only when one is set.
    monkeypatch.setenv("FLEET_METRICS_TOKEN", "metrics-token-for-schemathesis")
    with fleet_serve("fleet-st-", status_interval_s=30) as server:
        yield server


def _token(server: Running, role: str) -> str:
    return server.fleet("tokens", "create", "--role", role, "--name", f"st-{role}").split()[0]


def _seed(server: Running, admin: str, tmp_path: Path) -> str:
    """A terminal, a template and a licence for the drawn ids to find; the licence's serial."""
    server.fleet(
        "terminals", "add", TERMINAL, "--site", SITE, "--model", MODEL,
        "--out", str(tmp_path / "agent.toml"),
    )  # fmt: skip
    auth = {"Authorization": f"Bearer {admin}"}
    with httpx.Client(base_url=server.url, headers=auth, trust_env=False, timeout=30) as c:
        form = {"schema": {"type": "object", "properties": {}}, "layout": []}
        assert c.put(f"/api/v1/templates/{TEMPLATE}", json=form).status_code == 200
        r = c.post("/api/v1/licences", json={**lic_body(term=None), "terminal": TERMINAL})
        assert r.status_code == 201, r.text
        serial: str = r.json()["serial"]
        return serial


def _config(operator: str, admin: str, serial: str) -> str:
    bearer = 'Authorization = "Bearer {}"'.format
    lines = [
        f"headers = {{ {bearer(operator)} }}",
        "[generation]",
        f"max-examples = {MAX_EXAMPLES}",
        # What only admins may do, with an admin token; everything else as an operator.
        "[[operations]]",
        'include-method = "PUT"',
        f"headers = {{ {bearer(admin)} }}",
        "[[operations]]",
        'include-path-regex = "^/api/v1/rollouts"',
        'include-method = "POST"',
        f"headers = {{ {bearer(admin)} }}",
        "[[operations]]",
        'include-path-regex = "(/desired/rollback|/revoke)$"',
        f"headers = {{ {bearer(admin)} }}",
    ]
    for method, path, _why in ACCEPTED_422:
        lines += [
            "[[operations]]",
            f'include-method = "{method}"',
            f'include-path-regex = "^{path}$"',
            "checks.positive_data_acceptance.expected-statuses = "
            '["2xx", "401", "403", "404", "409", "422"]',
        ]
    for method, path, _why in NOT_INVALID:
        lines += [
            "[[operations]]",
            f'include-method = "{method}"',
            f'include-path-regex = "^{path}$"',
            "checks.negative_data_rejection.enabled = false",
        ]
    known = {
        "terminals": TERMINAL, "sites": SITE, "models": MODEL,
        "templates": TEMPLATE, "serials": serial,
    }  # fmt: skip
    for name, value in known.items():
        lines += [f"[dictionaries.{name}]", f'values = ["{value}"]']
    lines.append("[parameters]")
    drawn = {
        "path.terminal_id": "terminals", "query.terminal": "terminals",
        "body.terminal": "terminals", "path.site": "sites", "query.site": "sites",
        "path.model": "models", "path.template_id": "templates", "path.serial": "serials",
    }  # fmt: skip
    for parameter, name in drawn.items():
        lines.append(f'"{parameter}" = {{ dictionary = "{name}", probability = 0.5 }}')
    return "\n".join(lines) + "\n"


def test_every_route_agrees_with_the_openapi(running: Running, tmp_path: Path) -> None:
    operator, admin = _token(running, "operator"), _token(running, "admin")
    serial = _seed(running, admin, tmp_path)
    config = tmp_path / "schemathesis.toml"
    config.write_text(_config(operator, admin, serial))
    command = [
        str(ST), "--config-file", str(config), "run", f"{running.url}/openapi.json",
        # No --checks: every check is on by default, and naming them on the command line would
        # override the per-operation exceptions above.
        "--phases", "examples,coverage,fuzzing",
        "--exclude-path", "/api/v1/events", "--seed", SEED,
        # One worker: with two, CPython 3.11's ast.parse (in hypothesis's reprs) can fail.
        "--workers", "1", "--request-timeout", "30",
    ]  # fmt: skip
    started = time.monotonic()
    # In tmp_path: schemathesis keeps its example database in ./.schemathesis.
    out = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, timeout=240, env=_st_env()
    )
    report = out.stdout + out.stderr
    print(f"schemathesis took {time.monotonic() - started:.0f} s:", " ".join(command))
    assert out.returncode == 0, report[-20000:]
    selected = re.search(r"Selected: (\d+)/(\d+)", report)
    tested = re.search(r"Tested: (\d+)", report)
    assert selected and tested, report[-3000:]
    # Every operation but the event stream, and all of them reached.
    assert int(selected[1]) == int(selected[2]) - 1 == int(tested[1]) > 30, report[-3000:]
    log = (running.data / "serve.log").read_text(errors="replace")
    assert "Traceback" not in log and "unexpected error" not in log, log[-5000:]


def test_the_openapi_uses_only_json_schema_keywords() -> None:
    """pydantic writes a bound it cannot place as `ge`/`le`: JSON Schema (and so every client
    and schemathesis) ignores those, and the bound silently goes undocumented."""
    schema = create_app(Settings(dev_mode=True)).openapi()
    found: list[str] = []

    def walk(node: object, where: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("ge", "gt", "le", "lt") and not isinstance(value, dict):
                    found.append(f"{where}/{key}")
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, f"{where}/{i}")

    walk(schema, "")
    assert not found


def _st_env() -> dict[str, str]:
    env = {**os.environ, "NO_COLOR": "1", "SCHEMATHESIS_TELEMETRY": "false"}
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        env.pop(proxy, None)  # loopback requests must not go through a proxy
    return env
