"""Desired state end to end with real processes: `fleet serve` (its Mosquitto, SQLite) and real
`fleet-agent`s provisioned with the fleet's config key. An admin's change reaches the agent that
is online and, through the retained topic, the one that comes online later; what they report
matches; the server's drift clears; a tampered document is refused and leaves the agent on the
good one."""

from __future__ import annotations

import base64
import json
import re
import subprocess
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from fleet.server.broker_files import BROKER_SUBDIR, BrokerFiles
from fleet.server.settings import Settings
from tests.server.mqtt_helpers import connect
from tests.services.fleet_server import BIN, Server, wait_until


def provision_with_key(s: Server, terminal: str) -> Path:
    """`fleet terminals add` writes the config public key beside the agent config."""
    path = s.data / f"{terminal}.toml"
    key = s.data / "fleet-config.pub"
    s.fleet(
        "terminals", "add", terminal, "--site", "WH-HALL", "--model", "sim",
        "--data-dir", str(s.data), "--out", str(path), "--config-key", str(key),
    )  # fmt: skip
    assert key.exists()
    text = re.sub(
        r"^data_dir = .*$", f'data_dir = "{s.data / terminal}"', path.read_text(), flags=re.M
    )
    text = re.sub(r"^status_interval_s = .*$", "status_interval_s = 60", text, flags=re.M)
    text = text.replace("\n[broker]", f'\n[server]\nurl = "{s.url}"\n\n[broker]', 1)
    path.write_text(text)
    return path


def put(s: Server, token: str, path: str, body: Any) -> Any:
    r = httpx.put(
        s.url + path,
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
        trust_env=False,
    )
    assert r.status_code == 200, r.text
    return r.json()


def state(s: Server, terminal: str) -> dict[str, Any]:
    return s.get(f"/api/v1/terminals/{terminal}")["desired_state"]  # type: ignore[no-any-return]


def drifting(s: Server) -> float:
    for family in text_string_to_metric_families(s.get("/metrics")):
        if family.name == "fleet_desired_drift_terminals":
            return family.samples[0].value
    raise AssertionError("no drift metric")


def test_a_change_reaches_online_and_later_terminals_and_drift_clears(server: Server) -> None:
    s = server
    admin = s.fleet("tokens", "create", "--role", "admin", "--name", "e2e-admin").split()[0]
    t1, t2 = provision_with_key(s, "T1"), provision_with_key(s, "T2")
    agents = [
        subprocess.Popen(
            [str(BIN / "fleet-agent"), "run", "--config", str(t1)],
            stdout=subprocess.DEVNULL,
            stderr=(s.data / "agent-T1.log").open("wb"),
        )
    ]
    try:
        wait_until(lambda: s.get("/api/v1/terminals/T1")["online"], 15, "T1 online")
        out = put(s, admin, "/api/v1/config/sites/WH-HALL", {"status_interval_s": 7})
        new = {r["terminal"]: r for r in out["results"] if r["result"] == "new"}
        assert {"T1", "T2"} <= set(new) and all(r["published"] for r in new.values())

        # Online: applied and reported within seconds; the status report carries the hash.
        got = wait_until(
            lambda: (d := state(s, "T1"))["applied_hash"] == new["T1"]["hash"] and d,
            10,
            "T1 to apply the change",
        )
        assert got["reported_result"] == "ok" and got["drift"] is False
        assert got["applied_version"] == new["T1"]["version"]
        wait_until(
            lambda: (
                (s.get("/api/v1/terminals/T1")["status"] or {}).get("desired") == new["T1"]["hash"]
            ),
            15,
            "T1's status report to carry the applied hash",
        )
        assert state(s, "T2")["drift"] is True  # offline: it has not got it yet
        assert drifting(s) >= 1

        # Later: T2 comes online and takes the retained document.
        agents.append(
            subprocess.Popen(
                [str(BIN / "fleet-agent"), "run", "--config", str(t2)],
                stdout=subprocess.DEVNULL,
                stderr=(s.data / "agent-T2.log").open("wb"),
            )
        )
        got = wait_until(
            lambda: (d := state(s, "T2"))["applied_hash"] == new["T2"]["hash"] and d,
            15,
            "T2 to apply the retained change",
        )
        assert got["drift"] is False and got["drift_s"] is None

        # A tampered document (someone with broker access) is refused; T1 keeps the good one.
        settings = Settings(dev_mode=True, data_dir=s.data)
        # The server's user logs in on the broker's server listener only.
        _, port = BrokerFiles(s.data / BROKER_SUBDIR).server_listener()
        pub = connect(
            port, settings.broker_admin_user, settings.broker_admin_password.get_secret_value()
        )
        good = s.get("/api/v1/config/terminals/T1/desired")
        envelope = json.loads(_latest_envelope(s, "T1"))
        cose = bytearray(base64.b64decode(envelope["cose"]))
        cose[-5] ^= 0x01  # inside the signature
        envelope["cose"] = base64.b64encode(bytes(cose)).decode()
        pub.publish("fleet/v1/t/T1/desired", json.dumps(envelope), retain=True)
        refused = wait_until(
            lambda: (d := state(s, "T1"))["reported_result"] == "refused" and d,
            10,
            "T1 to refuse the tampered document",
        )
        assert "signature" in (refused["reported_error"] or "")
        assert refused["applied_hash"] == new["T1"]["hash"] and refused["drift"] is False
        assert good["version"] == new["T1"]["version"]
        pub.close()
        assert wait_until(lambda: drifting(s) == 0, 5, "no drift") is True

        # The command line sets a terminal's layer through the API; T1 takes the new version.
        layer = s.data / "t1-layer.json"
        layer.write_text(json.dumps({"paper": {"low_pct": 35}}))
        cli = {**s.env, "FLEET_URL": s.url, "FLEET_TOKEN": admin}
        out_cli = subprocess.run(
            [str(BIN / "fleet"), "config", "set", "terminal/T1", str(layer)],
            env=cli, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert out_cli.returncode == 0, out_cli.stderr
        assert re.match(r"T1\tnew\tversion (\d+)", out_cli.stdout), out_cli.stdout
        shown = subprocess.run(
            [str(BIN / "fleet"), "config", "get", "terminal/T1/desired"],
            env=cli, capture_output=True, text=True, timeout=30, check=True,
        ).stdout  # fmt: skip
        doc = json.loads(shown)["document"]
        assert doc["config"]["paper"]["low_pct"] == 35
        wait_until(
            lambda: state(s, "T1")["applied_version"] == doc["version"],
            10,
            "T1 on the CLI's change",
        )

        # A remote command goes to the agent and its result comes back to the API.
        r = httpx.post(
            s.url + "/api/v1/terminals/T1/commands",
            json={"name": "refresh_status", "args": {}, "ttl_s": 60},
            headers={"Authorization": f"Bearer {s.token}"},
            timeout=10,
            trust_env=False,
        )
        assert r.status_code == 201, r.text
        cmd_id = r.json()["id"]
        done = wait_until(
            lambda: next(
                (c for c in s.get("/api/v1/terminals/T1/commands")["items"] if c["id"] == cmd_id
                 and c["status"] == "ok"),
                None,
            ),
            10,
            "the command's result",
        )  # fmt: skip
        assert done["result_at"] is not None

        # A form template too large to travel inline: the agent fetches it from the server and
        # checks it against the signed hash before switching.
        fields = [
            {"name": f"field_{i}", "label": f"经营场所第{i}项", "widget": "text"}
            for i in range(400)
        ]
        form = {"schema": {"type": "object", "properties": {}}, "layout": fields}
        put(s, admin, "/api/v1/templates/gtgsh-setup", form)
        out = put(s, admin, "/api/v1/templates/gtgsh-setup/assignments", {"terminals": ["T1"]})
        (t1_new,) = [r for r in out["results"] if r["terminal"] == "T1" and r["result"] == "new"]
        latest = s.get("/api/v1/config/terminals/T1/desired")["document"]
        (entry,) = latest["templates"]
        assert "url" in entry and "content" not in entry and entry["size"] > 16 * 1024
        wait_until(
            lambda: state(s, "T1")["applied_hash"] == t1_new["hash"], 15, "T1 to fetch and apply"
        )
        stored = s.data / "T1" / "desired" / "templates" / f"{entry['sha256']}.json"
        assert json.loads(stored.read_bytes()) == form
    finally:
        for a in agents:
            a.terminate()
        for a in agents:
            try:
                a.wait(10)
            except subprocess.TimeoutExpired:
                a.kill()


def _latest_envelope(s: Server, terminal: str) -> str:
    """The retained envelope as the server stored it (the DB row of the latest version)."""
    import sqlite3

    db = sqlite3.connect(s.data / "fleet.sqlite3")
    try:
        (envelope,) = db.execute(
            "SELECT envelope FROM desired_doc WHERE terminal_id = ? ORDER BY version DESC LIMIT 1",
            (terminal,),
        ).fetchone()
    finally:
        db.close()
    return str(envelope)
