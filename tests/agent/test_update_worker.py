"""The agent's self-update worker: from the version a document names to a switched install, with
a real TUF repository served over real HTTP, a real A/B root, and every way it can go wrong."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agent.update.layout import COMMITTED, CURRENT
from agent.update.state import State
from agent.update.updater import Updater
from agent.update.worker import UpdateWorker
from tests.agent.test_update_support import make_fake_bundle
from tests.agent.test_update_tuf import Env, make_env

pytestmark = pytest.mark.timeout(60)


@dataclass
class Rig:
    env: Env
    updater: Updater
    tmp: Path
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    restarts: int = 0
    outcomes: int = 0

    def publish(self, version: str) -> None:
        bundle, _ = make_fake_bundle(self.tmp, version)
        self.env.repo.add_target(bundle, version)

    def worker(self, **kw: Any) -> UpdateWorker:
        def restart() -> None:
            self.restarts += 1

        def outcome() -> None:
            self.outcomes += 1
            found = self.updater.pending_outcome()
            if found is not None:
                self.events.append((found.event, found.to_json()))
                self.updater.acknowledge()

        args: dict[str, Any] = {
            "running": "1.0.0",
            "attempt_file": self.tmp / "data" / "update" / "attempt.json",
            "emit": lambda kind, **data: self.events.append((kind, data)),
            "restart": restart,
            "report_outcome": outcome,
            "updater": self.updater,
            "client": self.env.client(),
            "retry_delays_s": (0.05, 0.05),
        }
        return UpdateWorker(**(args | kw))

    def kinds(self) -> list[str]:
        return [k for k, _ in self.events]


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    with make_env(tmp_path) as env:
        u = Updater(tmp_path / "versions")
        bundle, digest = make_fake_bundle(tmp_path, "1.0.0")
        u.provision(bundle, "1.0.0", digest)
        yield Rig(env, u, tmp_path)


def test_a_named_release_is_downloaded_installed_switched_then_the_agent_restarts(
    rig: Rig,
) -> None:
    rig.publish("1.1.0")
    rig.worker().handle("1.1.0", 7)
    assert rig.kinds() == ["update_downloading", "update_installing"]
    assert rig.events[0][1] == {"version": "1.1.0", "from_version": "1.0.0"}
    rec = rig.updater.store.load()
    assert rec.state == State.SWITCHED and rec.target == "1.1.0"
    assert (
        rec.sha256
        == json.loads((rig.env.served / "metadata" / "targets.json").read_text())["signed"][
            "targets"
        ]["fleet-agent-1.1.0.tar.gz"]["hashes"]["sha256"]
    )
    assert rig.updater.layout.resolve(CURRENT) == "1.1.0"
    assert rig.updater.layout.resolve(COMMITTED) == "1.0.0"  # until it proves itself
    assert rig.restarts == 1
    assert rig.env.no_bundles()  # the download is removed once installed


def test_the_running_version_or_no_version_does_nothing(rig: Rig) -> None:
    w = rig.worker()
    w.want("1.0.0", 3)
    w.want(None, 4)
    assert w._pending is None  # nothing queued for the worker
    w.want("1.1.0", 5)  # not published: the worker acts on it, and says so
    assert w._pending == ("1.1.0", 5)
    w.start()
    deadline = time.monotonic() + 10
    while len(rig.events) < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    w.stop()
    # Only 1.1.0 was handled: one attempt, recorded for document 5.
    assert rig.kinds() == ["update_downloading", "update_failed"]
    assert rig.events[0][1]["version"] == "1.1.0" and rig.restarts == 0
    attempt = json.loads((rig.tmp / "data" / "update" / "attempt.json").read_text())
    assert (attempt["version"], attempt["document"]) == ("1.1.0", 5)


def test_a_release_is_attempted_once_per_document(rig: Rig) -> None:
    """A failed release is not retried in a loop (the stored document names it at every start);
    a newer document naming it again (a new rollout) is a new attempt."""
    w = rig.worker()
    w.handle("1.1.0", 7)  # not published
    assert rig.kinds() == ["update_downloading", "update_failed"]
    failed = rig.events[-1][1]
    assert failed["version"] == "1.1.0" and "unknown_target" in failed["reason"]
    assert rig.updater.store.load().state == State.IDLE  # reported and acknowledged
    rig.worker().handle("1.1.0", 7)  # a restarted agent, same document: nothing
    assert len(rig.events) == 2 and rig.restarts == 0
    rig.publish("1.1.0")
    rig.worker().handle("1.1.0", 8)
    assert rig.kinds()[2:] == ["update_downloading", "update_installing"]
    assert rig.updater.store.load().attempt == 2 and rig.restarts == 1


def test_a_tampered_bundle_is_refused_and_nothing_is_installed(rig: Rig) -> None:
    rig.publish("1.1.0")
    (path,) = (rig.env.served / "targets").glob("*.fleet-agent-1.1.0.tar.gz")
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    rig.env.serve_target("1.1.0", bytes(data))
    rig.worker().handle("1.1.0", 7)
    assert rig.kinds() == ["update_downloading", "update_failed"]
    assert "hash_mismatch" in rig.events[-1][1]["reason"]
    assert rig.updater.layout.installed() == ["1.0.0"]
    assert rig.updater.layout.resolve(CURRENT) == "1.0.0" and rig.restarts == 0
    assert rig.env.no_bundles()


def test_a_network_failure_is_retried_then_reported(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.publish("1.1.0")
    dead = rig.env.client()
    dead.metadata_url = "http://127.0.0.1:9/metadata/"  # nothing listens on the discard port
    rig.worker(client=dead).handle("1.1.0", 7)
    assert rig.kinds() == ["update_downloading", "update_failed"]
    # ngclient's urllib3 fetcher calls a refused connection a slow retrieval.
    assert rig.events[-1][1]["reason"].startswith("slow_retrieval:")
    assert sum("again in 0.05 s" in r.getMessage() for r in caplog.records) == 2
    assert rig.updater.store.load().state == State.IDLE and rig.restarts == 0


def test_a_network_failure_that_heals_within_the_retries_succeeds(rig: Rig) -> None:
    rig.publish("1.1.0")
    client = rig.env.client()
    good = client.metadata_url
    client.metadata_url = "http://127.0.0.1:9/metadata/"
    real_refresh = client.refresh
    calls = 0

    def refresh() -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            client.metadata_url = good  # the link came back
        real_refresh()

    client.refresh = refresh  # type: ignore[method-assign]
    rig.worker(client=client).handle("1.1.0", 7)
    assert rig.kinds() == ["update_downloading", "update_installing"] and rig.restarts == 1


def test_an_agent_that_cannot_update_says_why_once(rig: Rig) -> None:
    why = "the agent was not started by the update launcher"
    w = rig.worker(updater=None, client=None, unavailable=why)
    w.handle("1.1.0", 7)
    w.handle("1.1.0", 7)
    assert rig.events == [
        (
            "update_failed",
            {"version": "1.1.0", "from_version": "1.0.0", "reason": why, "attempt": 1},
        )
    ]


def test_it_waits_for_an_unreported_outcome_before_the_next_update(rig: Rig) -> None:
    """An earlier update's outcome not yet in the outbox: the next one waits for it."""
    rig.publish("1.1.0")
    rig.updater.begin("0.9.9")
    rig.updater.fail("an older attempt")  # state failed, not yet reported
    w = rig.worker()
    w.handle("1.1.0", 7)  # report_outcome acknowledges it, then the update goes ahead
    assert rig.kinds() == ["update_failed", "update_downloading", "update_installing"]


def test_stop_ends_a_wait_between_retries(rig: Rig) -> None:
    dead = rig.env.client()
    dead.metadata_url = "http://127.0.0.1:9/metadata/"
    w = rig.worker(client=dead, retry_delays_s=(30.0,))
    w.start()
    w.want("1.1.0", 7)
    threading.Event().wait(0.5)
    w.stop(timeout=5)
    assert w._thread is not None and not w._thread.is_alive()
    assert rig.restarts == 0


def test_a_download_cut_short_by_a_kill_is_cleared_at_start(rig: Rig) -> None:
    client = rig.env.client()
    client.targets_dir.mkdir(parents=True)
    (client.targets_dir / ".fleet-agent-1.1.0.tar.gz.partial").write_bytes(b"half")
    w = rig.worker(client=client)
    w.start()
    w.stop()
    assert not any(client.targets_dir.iterdir())


def test_a_version_that_is_no_directory_name_is_refused_and_reported(rig: Rig) -> None:
    rig.worker().handle("../../etc", 7)
    assert rig.kinds() == ["update_failed"]
    assert "not a usable agent version" in rig.events[0][1]["reason"]
    assert rig.updater.store.load().state == State.IDLE and rig.restarts == 0


def test_a_switch_that_fails_half_way_is_rolled_back(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk refuses the `current` pointer after `previous` moved: back to 1.0.0, reported."""
    rig.publish("1.1.0")
    real = rig.updater.layout.set_pointer

    def set_pointer(pointer: str, version: str) -> None:
        if pointer == CURRENT and version == "1.1.0":
            raise OSError(28, "No space left on device")
        real(pointer, version)

    monkeypatch.setattr(rig.updater.layout, "set_pointer", set_pointer)
    rig.worker().handle("1.1.0", 7)
    assert rig.kinds() == ["update_downloading", "update_installing", "update_rolled_back"]
    assert "No space left" in rig.events[-1][1]["reason"]
    assert rig.updater.layout.resolve(CURRENT) == "1.0.0"
    assert rig.updater.layout.installed() == ["1.0.0"] and rig.restarts == 0


def test_the_restart_waits_for_a_command_in_progress(rig: Rig) -> None:
    """A test page printing when the switch is done: the restart waits for it (bounded)."""
    rig.publish("1.1.0")
    busy = [True]
    timer = threading.Timer(1.5, lambda: busy.clear())
    timer.start()
    started = time.monotonic()
    rig.worker(idle=lambda: not busy).handle("1.1.0", 7)
    assert rig.restarts == 1 and time.monotonic() - started >= 1.4
    assert rig.updater.store.load().state == State.SWITCHED  # switched before the wait
    rig.updater.commit()
    rig.updater.acknowledge()
    rig.publish("1.2.0")
    started = time.monotonic()
    rig.worker(running="1.1.0", idle=lambda: False, max_defer_s=0.5).handle("1.2.0", 8)
    assert rig.restarts == 2 and 0.4 <= time.monotonic() - started < 5  # not forever
