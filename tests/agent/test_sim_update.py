"""fleet-sim's simulated self-update (agent/sim/update.py, wired in agent/sim/terminal.py), and
the demo's update repository with its demo release (fleet/demo_fleet.py)."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

import rust_core
from agent.desired import document
from agent.sim.cli import _run_parser
from agent.sim.sites import layout
from agent.sim.terminal import Behaviour, Message, SimTerminal
from agent.sim.update import ROLLED_BACK_REASON, SimUpdater, UpdatePolicy
from agent.update.tuf_client import bundle_target_name
from fleet.demo_fleet import DEV_ROOT_KEY_DIR, next_patch, prepare_demo_release
from fleet.server.updates.bundle import read_bundle_version
from fleet.server.updates.repository import UpdateRepository, server_updates_dir

KEY = rust_core.SigningKey.generate("EdDSA")
RUNNING = "1.0.0"
SPEC = layout(1)[0]
TID = SPEC.terminal_id


class FakeClock:
    def __init__(self, t: float = 5000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def sealed(version: int, agent: str | None) -> bytes:
    doc = {
        "v": 1,
        "terminal": TID,
        "version": version,
        "issued_at": "2026-11-27T09:30:00Z",
        "config": {"status_interval_s": 30},
        "templates": [],
        "agent": None if agent is None else {"version": agent},
    }
    return document.seal(doc, KEY)[0]


def terminal(**policy: Any) -> tuple[SimTerminal, FakeClock]:
    clock = FakeClock()
    behaviour = Behaviour(
        agent_version=RUNNING,
        prints_per_hour=0.0,
        jam_rate=0.0,
        update=UpdatePolicy(seconds=(1.0, 2.0), **policy),
    )
    return SimTerminal(SPEC, behaviour, 7, clock, KEY.verifying_key()), clock


def events(messages: list[Message]) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in messages if m.topic.endswith("/event")]


def kinds(messages: list[Message]) -> list[str]:
    return [e["event"] for e in events(messages)]


def run_update(term: SimTerminal, doc_version: int, agent: str) -> list[Message]:
    """Deliver the document, then let simulated time pass until the update is over."""
    out = term.on_message("desired", sealed(doc_version, agent), 100.0)
    assert json.loads(next(m for m in out if m.topic.endswith("/reported")).payload)["result"] == (
        "ok"
    )
    now = 100.0
    while term.updater.due is not None:
        now = term.updater.due
        out += term.update_step(now)
    return out


def test_an_update_emits_the_agents_three_events_then_runs_the_new_version() -> None:
    term, _ = terminal()
    first = term.on_message("desired", sealed(1, "1.1.0"), 100.0)
    assert kinds(first) == ["update_downloading"]
    assert term.update_step(100.0) == []  # nothing due yet
    out = first + run_update_rest(term)
    assert kinds(out) == ["update_downloading", "update_installing", "update_succeeded"]
    down, inst, done = events(out)
    assert {k: down[k] for k in ("version", "from_version", "agent")} == {
        "version": "1.1.0",
        "from_version": RUNNING,
        "agent": RUNNING,
    }
    assert set(down) == {"v", "seq", "ts", "agent", "event", "version", "from_version"}
    assert set(inst) == set(down) and inst["agent"] == RUNNING
    # agent.update.updater.Outcome.to_json() without `event`, sent by the version now running.
    assert {k: done[k] for k in ("version", "from_version", "reason", "attempt", "agent")} == {
        "version": "1.1.0",
        "from_version": RUNNING,
        "reason": None,
        "attempt": 1,
        "agent": "1.1.0",
    }
    assert set(done) == set(down) | {"reason", "attempt"}
    assert [e["seq"] for e in events(out)] == sorted(e["seq"] for e in events(out))
    # A fresh retained presence with the new version comes right before the outcome.
    presence = [m for m in out if m.topic.endswith("/presence")]
    assert len(presence) == 1 and presence[0].retain and out[-2] == presence[0]
    assert json.loads(presence[0].payload)["agent"] == "1.1.0"
    # From now on every report names it.
    assert term.agent_version == "1.1.0"
    assert json.loads(term.presence(online=True).payload)["agent"] == "1.1.0"
    term.on_connect(200.0)
    status = [json.loads(m.payload) for m in term.tick(1e9) if m.topic.endswith("/status")]
    assert status and status[0]["agent"] == "1.1.0"


def run_update_rest(term: SimTerminal) -> list[Message]:
    out: list[Message] = []
    while term.updater.due is not None:
        out += term.update_step(term.updater.due)
    return out


def test_the_simulated_time_is_within_the_configured_range() -> None:
    term, _ = terminal()
    term.on_message("desired", sealed(1, "1.1.0"), 100.0)
    flight = term.updater.in_flight
    assert flight is not None and 101.0 <= flight.done_at <= 102.0
    assert 100.0 < flight.installing_at < flight.done_at
    # The outcome waits for its time even when polled in between.
    assert kinds(term.update_step(flight.installing_at)) == ["update_installing"]
    assert term.update_step(flight.done_at - 0.01) == []
    assert kinds(term.tick(flight.done_at)) == ["update_succeeded"]  # tick steps it too


def test_a_bad_release_is_rolled_back_and_the_version_stays() -> None:
    term, _ = terminal(bad_versions=frozenset({"1.2.0"}))
    out = run_update(term, 1, "1.2.0")
    assert kinds(out) == ["update_downloading", "update_installing", "update_rolled_back"]
    done = events(out)[-1]
    assert {k: done[k] for k in ("version", "from_version", "reason", "attempt", "agent")} == {
        "version": "1.2.0",
        "from_version": RUNNING,
        "reason": ROLLED_BACK_REASON,
        "attempt": 1,
        "agent": RUNNING,
    }
    assert not [m for m in out if m.topic.endswith("/presence")]
    assert term.agent_version == RUNNING
    assert json.loads(term.presence(online=True).payload)["agent"] == RUNNING


def test_the_same_document_again_does_nothing() -> None:
    term, _ = terminal(bad_versions=frozenset({"1.2.0"}))
    run_update(term, 1, "1.2.0")
    # The retained document again (a reconnect): "ok" without applying anything.
    again = term.on_message("desired", sealed(1, "1.2.0"), 200.0)
    assert kinds(again) == [] and term.updater.due is None


def test_a_newer_document_naming_the_failed_version_retries_it() -> None:
    term, _ = terminal(bad_versions=frozenset({"1.2.0"}))
    run_update(term, 1, "1.2.0")
    out = run_update(term, 2, "1.2.0")
    assert kinds(out) == ["update_downloading", "update_installing", "update_rolled_back"]
    assert events(out)[-1]["attempt"] == 2  # consecutive attempts at one target, as Updater.begin


def test_a_newer_document_naming_the_running_version_or_none_does_nothing() -> None:
    term, _ = terminal()
    run_update(term, 1, "1.1.0")
    assert kinds(term.on_message("desired", sealed(2, "1.1.0"), 200.0)) == []
    assert kinds(term.on_message("desired", sealed(3, None), 201.0)) == []
    assert term.updater.due is None


def test_a_document_during_an_update_waits_for_it_to_end() -> None:
    term, _ = terminal()
    assert kinds(term.on_message("desired", sealed(1, "1.1.0"), 100.0)) == ["update_downloading"]
    # Another version while the first is in flight: taken up once it is over.
    assert kinds(term.on_message("desired", sealed(2, "1.3.0"), 100.5)) == []
    out = run_update_rest(term)
    assert kinds(out) == [
        "update_installing",
        "update_succeeded",
        "update_downloading",
        "update_installing",
        "update_succeeded",
    ]
    assert events(out)[-1]["from_version"] == "1.1.0"
    assert term.agent_version == "1.3.0"


def test_failure_rate_rolls_back_by_chance() -> None:
    always = SimUpdater(RUNNING, UpdatePolicy(failure_rate=1.0), random.Random(1))
    assert [k for k, _ in always.want("1.1.0", 1, 0.0)] == ["update_downloading"]
    emitted, switched = always.poll(10.0)
    assert [k for k, _ in emitted] == ["update_installing", "update_rolled_back"]
    assert not switched and always.running == RUNNING
    never = SimUpdater(RUNNING, UpdatePolicy(failure_rate=0.0), random.Random(1))
    never.want("1.1.0", 1, 0.0)
    emitted, switched = never.poll(10.0)
    assert emitted[-1][0] == "update_succeeded" and switched and never.running == "1.1.0"


def test_policy_and_cli_options() -> None:
    with pytest.raises(ValueError):
        UpdatePolicy(seconds=(2.0, 1.0))
    with pytest.raises(ValueError):
        UpdatePolicy(failure_rate=1.5)
    base = ["--terminals", "1", "--broker", "mqtt://x", "--password-template", "p-{id}"]
    args = _run_parser().parse_args(base)
    assert args.update_seconds == (1.0, 2.0)
    assert args.bad_versions == frozenset() and args.update_failure_rate == 0.0
    args = _run_parser().parse_args(
        [
            *base,
            *("--update-seconds", "0.5", "--bad-versions", "1.2.0, 1.3.0"),
            *("--update-failure-rate", "0.1"),
        ]
    )
    assert args.update_seconds == (0.5, 0.5)
    assert args.bad_versions == frozenset({"1.2.0", "1.3.0"})
    assert args.update_failure_rate == 0.1
    with pytest.raises(SystemExit):
        _run_parser().parse_args([*base, "--update-seconds", "2,1"])


# -- the demo's update repository ----------------------------------------------------------------


def test_next_patch() -> None:
    assert next_patch("0.1.0") == "0.1.1"
    assert next_patch("2.9.19") == "2.9.20"
    assert next_patch("0.0.0+unknown") == "1.0.1"
    assert next_patch("1.0") == "1.0.1"


def test_demo_initialises_the_repository_and_publishes_its_release(tmp_path: Path) -> None:
    version = prepare_demo_release(tmp_path, "0.4.2")
    assert version == "0.4.3"
    repo = UpdateRepository(server_updates_dir(tmp_path))
    assert repo.initialised
    assert bundle_target_name(version) in repo.targets().targets
    # The root key is in the dev-only folder, never with the online keys.
    root_keys = list((tmp_path / DEV_ROOT_KEY_DIR).glob("*.pem"))
    assert len(root_keys) == 1
    assert not (repo.online_key_dir / root_keys[0].name).exists()
    bundles = list((tmp_path / "releases").glob("*.tar.gz"))
    assert [read_bundle_version(b) for b in bundles] == [version]
    # Again (the next `make run`): the same repository, the release left as it is.
    root = (repo.metadata_dir / "root.json").read_bytes()
    targets = repo.targets().version
    assert prepare_demo_release(tmp_path, "0.4.2") == version
    assert (repo.metadata_dir / "root.json").read_bytes() == root
    assert UpdateRepository(server_updates_dir(tmp_path)).targets().version == targets
