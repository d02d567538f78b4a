"""Desired state end to end: the real `fleet-agent run` process against a real Mosquitto.

A retained document applied on connect (and the new status interval seen on the wire), every
kind of bad document refused with the files untouched, and SIGKILL at random points of the
apply, many times: the stored document is always the old or the new one, and the agent starts.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

import rust_core
from agent.desired import document
from agent.desired.document import template_entry
from agent.desired.store import CURRENT, DesiredStore
from agent.service import STEP_DELAY_ENV
from tests.agent.agent_harness import AgentProcess, Msg, Subscriber, wait_until, write_config
from tests.agent.desired_helpers import doc, form, seal, seal_unchecked, tamper
from tests.services.mosquitto import Broker

KEY = rust_core.SigningKey.generate("EdDSA")
VKEY = KEY.verifying_key()
DESIRED = "fleet/v1/t/T-0001/desired"
QUIET_SIM = """
[printer]
driver = "sim"
capacity = 500
prints_per_hour = 0

[reader]
driver = "sim"
"""


class TimedSubscriber(Subscriber):
    """Records when each message arrived, too."""

    def __init__(self, broker: Broker, topic: str) -> None:
        self.arrived: list[float] = []
        super().__init__(broker, topic)

    def _on_message(self, client: mqtt.Client, userdata: Any, m: mqtt.MQTTMessage) -> None:
        with self._cond:
            self.arrived.append(time.monotonic())
            self.messages.append(Msg(m.topic, bytes(m.payload), bool(m.retain)))
            self._cond.notify_all()

    def publish(self, payload: bytes, retain: bool = True) -> None:
        info = self.client.publish(DESIRED, payload, qos=1, retain=retain)
        info.wait_for_publish(5)

    def reported(self) -> list[dict[str, Any]]:
        return [m.json() for m in self.on("reported")]

    def statuses(self) -> list[tuple[float, dict[str, Any]]]:
        with self._cond:
            pairs = list(zip(self.arrived, self.messages, strict=True))
        return [(t, m.json()) for t, m in pairs if m.topic.endswith("/status")]


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    made: list[AgentProcess] = []
    yield made
    for a in made:
        a.ensure_stopped()


def agent_config(tmp_path: Path, broker: Broker, **kw: Any) -> Path:
    pem = tmp_path / "fleet-config.pub"
    pem.write_text(KEY.public_pem())
    cfg = write_config(tmp_path / "a" / "agent.toml", broker, extra=QUIET_SIM, **kw)
    cfg.write_text(f'config_public_key = "{pem}"\n' + cfg.read_text())
    return cfg


def desired_dir(cfg: Path) -> Path:
    return cfg.parent / "data" / "desired"


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_retained_document_applied_on_connect_and_interval_takes_effect(
    broker: Broker, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    sub = TimedSubscriber(broker, "fleet/v1/t/T-0001/#")
    raw, h = document.seal(
        doc(
            7,
            config={"status_interval_s": 5, "paper": {"low_pct": 30}},
            templates=[template_entry("gtgsh-setup", 1, form(1))],
        ),
        KEY,
    )
    sub.publish(raw)  # retained, before the agent ever ran
    cfg = agent_config(tmp_path, broker, status_interval_s=60.0)
    agent = AgentProcess(cfg).start()
    agents.append(agent)
    assert sub.wait_for(lambda ms: any(r["result"] == "ok" for r in sub.reported()), 15), (
        agent.log()
    )
    ok = next(r for r in sub.reported() if r["result"] == "ok")
    assert (ok["version"], ok["hash"], ok["applied"]) == (7, h, {"version": 7, "hash": h})
    document.check_reported(ok)
    assert (desired_dir(cfg) / CURRENT).read_bytes() == raw

    # Status reports carry the hash, and come every 5 s (agent.toml says 60).
    def with_hash() -> list[float]:
        return [t for t, s in sub.statuses() if s["desired"] == h]

    assert sub.wait_for(lambda ms: len(with_hash()) >= 3, 20), agent.log()
    times = with_hash()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps and all(4.0 <= g <= 6.5 for g in gaps), gaps

    # A restart: runs on the stored document from its first report, and says so again; the
    # retained document delivered again on connect is not an error.
    assert agent.terminate() == 0, agent.log()
    seen = len(sub.reported())
    n_status = len(sub.statuses())
    agent = AgentProcess(cfg).start()
    agents.append(agent)
    assert sub.wait_for(lambda ms: len(sub.reported()) > seen, 15), agent.log()
    assert wait_until(lambda: "desired version 7 again: already applied" in agent.log(), 10)
    assert all(r["result"] == "ok" and r["version"] == 7 for r in sub.reported()[seen:])
    assert sub.wait_for(lambda ms: len(sub.statuses()) > n_status, 10)
    assert sub.statuses()[n_status][1]["desired"] == h
    assert agent.terminate() == 0
    assert "Traceback" not in agent.log()
    sub.close()


def test_bad_documents_refused_reported_and_files_untouched(
    broker: Broker, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    sub = TimedSubscriber(broker, "fleet/v1/t/T-0001/reported")
    good = seal(doc(5, templates=[template_entry("gtgsh-setup", 5, form(5))]), KEY)
    sub.publish(good)
    cfg = agent_config(tmp_path, broker)
    agent = AgentProcess(cfg).start()
    agents.append(agent)
    assert sub.wait_for(lambda ms: any(r["result"] == "ok" for r in sub.reported()), 15), (
        agent.log()
    )
    before = files(desired_dir(cfg))
    assert CURRENT in before
    cases = [
        ("signature", tamper(good, "signature"), "cose: bad_signature"),
        ("payload", tamper(good, "payload"), "cose: "),
        ("replayed older", seal(doc(4), KEY), "version 4 is not newer than applied 5"),
        ("same version", seal(doc(5, config={"debounce_s": 9}), KEY), "not newer than applied 5"),
        (
            "schema",
            seal_unchecked(doc(6, config={"paper": {"low_pct": 150}}), KEY),
            "config.paper.low_pct",
        ),
        ("wrong terminal", seal(doc(6, terminal="T-0002"), KEY), "document is for 'T-0002'"),
    ]
    for name, raw, error in cases:
        seen = len(sub.reported())
        sub.publish(raw)
        assert wait_until(lambda: len(sub.reported()) > seen, 10), (name, agent.log())  # noqa: B023
        msg = sub.reported()[seen]
        assert msg["result"] == "refused", (name, msg)
        assert error in msg["error"], (name, msg["error"])
        assert msg["applied"]["version"] == 5
        document.check_reported(msg)
        assert files(desired_dir(cfg)) == before, name
    # And a good one still goes through afterwards.
    seen = len(sub.reported())
    sub.publish(seal(doc(6), KEY))
    assert sub.wait_for(lambda ms: len(sub.reported()) > seen, 10)
    assert sub.reported()[seen]["result"] == "ok" and sub.reported()[seen]["version"] == 6
    assert agent.terminate() == 0
    assert "Traceback" not in agent.log()
    sub.close()


RUNS = 40


def test_power_cut_during_apply_leaves_old_or_new(
    broker: Broker, tmp_path: Path, agents: list[AgentProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGKILL at random points of the apply, RUNS times: the stored document is always byte
    for byte the old one or a new one, loads (signature, templates) and the agent starts."""
    rng = random.Random(int(os.environ.get("DESIRED_POWER_CUT_SEED", "0")) or None)
    sub = TimedSubscriber(broker, "fleet/v1/t/T-0001/reported")
    cfg = agent_config(tmp_path, broker)
    root = desired_dir(cfg)
    # Each step of the commit sleeps a little, so kills land inside the write sequence.
    monkeypatch.setenv(STEP_DELAY_ENV, "0.01")
    outcome = {"old": 0, "new": 0, "mid": 0}
    published: dict[bytes, int] = {}
    for i in range(1, RUNS + 1):
        entry = template_entry("gtgsh-setup", i, form(i))
        new = seal(doc(i, config={"status_interval_s": 5 + i % 7}, templates=[entry]), KEY)
        old = (root / CURRENT).read_bytes() if (root / CURRENT).exists() else None
        sub.publish(new)
        published[new] = i
        agent = AgentProcess(cfg).start()
        agents.append(agent)
        new_template = root / "templates" / f"{entry['sha256']}.json"
        if rng.random() < 0.75:
            # Aim inside the write sequence: from its first step on, a random delay.
            wait_until(new_template.exists, 10, step=0.001)
            time.sleep(rng.uniform(0.0, 0.09))
        else:
            time.sleep(rng.uniform(0.05, 1.0))
        agent.kill()
        leftovers = list(root.rglob("*.tmp")) if root.exists() else []
        current = (root / CURRENT).read_bytes() if (root / CURRENT).exists() else None
        # The old one, or the new one -- or one published in an earlier run that the broker
        # still had queued for the agent's session (QoS 1): a whole document, never older.
        newer = [raw for raw, v in published.items() if v > published.get(old or b"", 0)]
        assert current == old or current in newer, f"run {i}: current is not a published one"
        if current is not None:
            got = DesiredStore(root).load(VKEY, "T-0001")
            assert got.raw == current and not got.problems, (i, got.problems)
        outcome["mid" if leftovers else ("old" if current == old else "new")] += 1
    print(f"power cut: {RUNS} runs, outcomes {outcome}")
    assert outcome["old"] + outcome["mid"] and outcome["new"], outcome

    # Without the delay, the last start runs to the end: the latest document applied.
    monkeypatch.delenv(STEP_DELAY_ENV)
    seen = len(sub.reported())
    agent = AgentProcess(cfg).start()
    agents.append(agent)
    assert sub.wait_for(
        lambda ms: any(r["version"] == RUNS and r["result"] == "ok" for r in sub.reported()[seen:]),
        15,
    ), agent.log()
    assert (root / CURRENT).read_bytes() == new
    assert agent.terminate() == 0
    assert "Traceback" not in agent.log()
    sub.close()


def test_reported_again_after_the_broker_comes_back(
    persistent_broker: Broker, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    """On every reconnect the agent says what it runs (the server may have lost it)."""
    broker = persistent_broker
    pub = TimedSubscriber(broker, "fleet/v1/t/T-0001/desired")
    pub.publish(seal(doc(1), KEY))
    pub.close()
    # A persistent session: what the agent says while this subscriber is still reconnecting
    # after the broker restart is queued for it, not lost (the agent is often quicker).
    sub = Subscriber(broker, "fleet/v1/t/T-0001/reported", persistent=True)
    cfg = agent_config(tmp_path, broker)
    agent = AgentProcess(cfg).start()
    agents.append(agent)
    assert sub.wait_for(lambda ms: len(sub.on("reported")) >= 1, 15), agent.log()
    before = len(sub.on("reported"))
    broker.stop()
    time.sleep(0.5)
    broker.start()
    assert sub.wait_for(lambda ms: len(sub.on("reported")) > before, 20), agent.log()
    again = sub.on("reported")[before].json()
    assert again["result"] == "ok" and again["version"] == 1
    assert agent.terminate() == 0
    sub.close()


def test_commands_are_wired_to_the_agent(
    broker: Broker, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    """`cmd` reaches agent.commands on its own thread; results come back on `cmd/result`."""
    sub = TimedSubscriber(broker, "fleet/v1/t/T-0001/#")
    agent = AgentProcess(agent_config(tmp_path, broker, status_interval_s=60.0)).start()
    agents.append(agent)
    assert sub.wait_for(lambda ms: len(sub.statuses()) >= 1, 15), agent.log()

    def command(cid: str, name: str) -> None:
        now = time.time()
        body = {
            "v": 1,
            "id": cid,
            "name": name,
            "args": {},
            "issued_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now)),
            "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now + 300)),
        }
        sub.client.publish("fleet/v1/t/T-0001/cmd", document.canonical(body), qos=1)

    def result(cid: str) -> dict[str, Any] | None:
        found = [m.json() for m in sub.on("result") if m.json().get("id") == cid]
        return found[0] if found else None

    n = len(sub.statuses())
    command("refresh-0001", "refresh_status")
    assert sub.wait_for(lambda ms: result("refresh-0001") is not None, 10), agent.log()
    assert result("refresh-0001")["status"] == "ok"  # type: ignore[index]
    assert sub.wait_for(lambda ms: len(sub.statuses()) > n, 5), "no status report at once"

    command("restart-0001", "restart_agent")
    assert sub.wait_for(lambda ms: result("restart-0001") is not None, 10), agent.log()
    assert agent.proc is not None and agent.proc.wait(15) == 0
    assert "restart requested by a remote command" in agent.log()
    sub.close()
