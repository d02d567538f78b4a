"""`fleet-agent run` as a real process against a real Mosquitto: Last Will, SIGTERM, SIGKILL in
the middle of sending, a terminal posing as another, and the 60 s broker outage of the issue."""

from __future__ import annotations

import contextlib
import random
import re
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.agent.agent_harness import (
    AgentProcess,
    Subscriber,
    assert_every_seq_in_order,
    wait_until,
    write_config,
)
from tests.services.mosquitto import Broker

SIM_DEVICES = """
[printer]
driver = "sim"
capacity = 500
prints_per_hour = 3600

[reader]
driver = "sim"
"""


def queued_rows(db: Path) -> Callable[[], int]:
    def count() -> int:
        with contextlib.closing(sqlite3.connect(db, timeout=5)) as c:
            return int(c.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    return count


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    made: list[AgentProcess] = []
    yield made
    for a in made:
        a.ensure_stopped()


def start(agents: list[AgentProcess], config: Path) -> AgentProcess:
    a = AgentProcess(config).start()
    agents.append(a)
    return a


def test_presence_retained_and_last_will_on_sigkill(
    broker: Broker, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    sub = Subscriber(broker, "fleet/v1/t/T-0001/#")
    agent = start(agents, write_config(tmp_path / "a" / "agent.toml", broker, extra=SIM_DEVICES))
    assert sub.wait_for(lambda ms: len(sub.on("status")) >= 1, 15), agent.log()
    status = sub.on("status")[0].json()
    assert status["printer"]["driver"] == "sim" and status["reader"]["driver"] == "sim"
    assert status["printer"]["paper"]["capacity"] == 500
    [online] = sub.on("presence")
    assert online.json()["online"] is True
    late = Subscriber(broker, "fleet/v1/t/T-0001/presence")
    assert late.wait_for(lambda ms: len(ms) == 1)
    assert late.messages[0].retain and late.messages[0].json()["online"] is True
    late.close()

    agent.kill()
    # The broker notices the dead connection and publishes the Will at once.
    assert sub.wait_for(lambda ms: len(sub.on("presence")) == 2, 10)
    assert sub.on("presence")[1].json()["online"] is False
    after = Subscriber(broker, "fleet/v1/t/T-0001/presence")
    assert after.wait_for(lambda ms: len(ms) == 1)
    assert after.messages[0].retain and after.messages[0].json()["online"] is False
    after.close()
    sub.close()


def test_sigterm_flushes_says_goodbye_and_exits_0(
    broker: Broker, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    sub = Subscriber(broker, "fleet/v1/t/T-0001/#")
    cfg = write_config(tmp_path / "a" / "agent.toml", broker, status_interval_s=0.2)
    agent = start(agents, cfg)
    assert sub.wait_for(lambda ms: len(sub.seqs()) >= 3, 15), agent.log()
    assert agent.terminate() == 0, agent.log()
    stats, next_seq = agent.outbox()
    assert stats.queued == 0, "a clean stop with the broker up leaves nothing behind"
    assert sub.wait_for(lambda ms: sub.on("presence")[-1].json()["online"] is False, 5)
    assert_every_seq_in_order(sub.seqs(), next_seq - 1)
    assert "SIGTERM received" in agent.log() and "Traceback" not in agent.log()
    sub.close()


def test_sigterm_without_a_broker_keeps_the_outbox_and_exits_promptly(
    broker: Broker, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    cfg = write_config(tmp_path / "a" / "agent.toml", broker, status_interval_s=0.1)
    broker.stop()
    agent = start(agents, cfg)
    assert wait_until(lambda: "next seq" in agent.log(), 15)
    time.sleep(1.0)
    began = time.monotonic()
    assert agent.terminate() == 0, agent.log()
    assert time.monotonic() - began < 3.0, "nothing to flush to: no reason to wait"
    stats, next_seq = agent.outbox()
    assert stats.queued == next_seq - 1 >= 5, "every report made offline is still on disk"
    assert "they go out on next start" in agent.log()


def test_a_corrupt_outbox_is_set_aside_and_said_so(
    broker: Broker, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    cfg = write_config(tmp_path / "a" / "agent.toml", broker)
    data = cfg.parent / "data"
    data.mkdir()
    (data / "outbox.db").write_bytes(b"\x00garbage from a power cut" * 200)
    sub = Subscriber(broker, "fleet/v1/t/T-0001/event")
    agent = start(agents, cfg)
    assert sub.wait_for(lambda ms: len(ms) >= 1, 15), agent.log()
    event = sub.messages[0].json()
    assert event["event"] == "outbox_reset" and "was unreadable" in event["detail"]
    assert "was unreadable" in agent.log()
    assert [p.name for p in data.iterdir() if ".corrupt-" in p.name]
    assert agent.terminate() == 0
    sub.close()


def test_sigkill_mid_send_loses_nothing_and_seq_continues(
    persistent_broker: Broker, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    """Killed while reporting ten times a second, and killed in the middle of flushing a
    backlog: after each restart every seq arrives, in order, and seq carries on."""
    broker = persistent_broker
    sub = Subscriber(broker, "fleet/v1/t/T-0001/+", persistent=True)
    cfg = write_config(
        tmp_path / "a" / "agent.toml",
        broker,
        status_interval_s=0.05,
        poll_interval_s=0.05,
        reconnect_max_s=0.5,
        # One message in flight at a time: a backlog takes long enough to flush that the kill
        # below lands in the middle of it.
        broker_extra="inflight_max = 1",
        extra=SIM_DEVICES,
    )
    rng = random.Random(7)
    for _ in range(3):  # steady state: kill at a random moment
        agent = start(agents, cfg)
        assert sub.wait_for_seqs(len(sub.seqs()) + 3, 15), agent.log()
        time.sleep(rng.uniform(0.05, 0.4))
        agent.kill()

    # A backlog: the broker goes away while the agent reports, comes back, and the agent is
    # killed as soon as the backlog starts to arrive.
    agent = start(agents, cfg)
    n = len(sub.seqs())
    assert sub.wait_for(lambda ms: len(sub.seqs()) > n + 2, 15), agent.log()
    broker.stop()
    time.sleep(3.0)
    queued = queued_rows(cfg.parent / "data" / "outbox.db")
    peak = queued()
    assert peak >= 20, "reports made while the broker is down wait on disk"
    broker.start()
    # Watch the outbox drain (a reader beside the agent: WAL allows it) and kill the agent
    # once part of the backlog is out and part is not.
    assert wait_until(lambda: 0 < queued() < peak - 2, 15, step=0.002), agent.log()
    agent.kill()
    assert queued() > 0

    agent = start(agents, cfg)
    time.sleep(1.0)
    assert agent.terminate() == 0, agent.log()
    stats, next_seq = agent.outbox()
    assert stats.queued == 0 and stats.rejected == 0 and stats.dropped_status == 0
    last = next_seq - 1
    assert sub.wait_for(lambda ms: last in sub.seqs(), 10)
    duplicates = assert_every_seq_in_order(sub.seqs(), last)
    # Each kill can cost at most the in-flight window in re-sends, never a loss.
    assert duplicates <= 5 * 10
    logs = agent.log()
    starts = re.findall(r"INFO agent: fleet-agent .* next seq (\d+), (\d+) queued", logs)
    assert len(starts) == 5
    assert int(starts[-1][1]) > 0, "the last kill landed mid-flush"
    assert "Traceback" not in logs
    sub.close()


def test_terminal_posing_as_another_is_refused_and_counted(
    broker: Broker, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    """T-0001's credentials, T-0002's terminal id: nothing gets out as T-0002, every refused
    message is counted, and the agent does not retry them for ever."""
    sub = Subscriber(broker, "fleet/#")
    cfg = write_config(
        tmp_path / "a" / "agent.toml",
        broker,
        terminal_id="T-0002",
        username="T-0001",
        status_interval_s=0.2,
    )
    agent = start(agents, cfg)
    time.sleep(2.5)
    assert agent.terminate() == 0, agent.log()
    stats, next_seq = agent.outbox()
    assert next_seq > 5, "the agent kept reporting"
    assert stats.rejected == next_seq - 1, "every report was refused and counted"
    assert stats.queued == 0
    assert sub.messages == [], "nothing may be published under another terminal's id"
    log = agent.log()
    assert "broker refused our presence message: Not authorized" in log
    assert "counted as rejected" in log
    # Once refused, a topic is not sent again (Mosquitto drops the connection on each refusal):
    # a handful of connections, not one per report.
    assert log.count("connected to ") <= 5, log


@pytest.mark.slow
def test_sixty_second_outage_every_seq_arrives_in_order(
    persistent_broker: Broker, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    """The issue's outage test: the broker is stopped for 60 s while the agent reports every
    second; after the restart the subscriber (whose session the broker kept) receives every seq
    in order with no gap."""
    broker = persistent_broker
    sub = Subscriber(broker, "fleet/v1/t/T-0001/+", persistent=True)
    cfg = write_config(
        tmp_path / "a" / "agent.toml",
        broker,
        status_interval_s=1.0,
        reconnect_max_s=5.0,
        extra=SIM_DEVICES,
    )
    agent = start(agents, cfg)
    assert sub.wait_for(lambda ms: len(sub.seqs()) >= 3, 15), agent.log()
    broker.stop()
    down_at = time.monotonic()
    time.sleep(60.0)
    broker.start()
    outage = time.monotonic() - down_at
    # The backlog follows the reconnect (backoff capped at 5 s); then the agent stops cleanly.
    assert wait_until(lambda: len(set(sub.seqs())) >= outage, 30), agent.log()
    assert agent.terminate() == 0, agent.log()
    stats, next_seq = agent.outbox()
    assert stats.queued == 0 and stats.dropped_status == 0
    last = next_seq - 1
    assert sub.wait_for(lambda ms: last in sub.seqs(), 10)
    assert_every_seq_in_order(sub.seqs(), last)
    assert last >= 60, f"only {last} reports in a 60 s+ run at 1 s"
    statuses = [m.json() for m in sub.on("status")]
    peak = max(s["outbox"]["queued"] for s in statuses)
    assert peak >= 50, "reports made during the outage were queued on disk"
    sub.close()
