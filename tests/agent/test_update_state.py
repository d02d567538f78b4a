"""The update state machine: the transition table, the state file, recovery from a bad one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.update.layout import COMMITTED, CURRENT, PREVIOUS
from agent.update.state import (
    TRANSITIONS,
    CorruptState,
    Event,
    IllegalTransition,
    Record,
    State,
    StateStore,
    next_state,
)
from agent.update.updater import Updater
from tests.agent.test_update_support import make_fake_bundle

HAPPY_PATH = [
    (Event.BEGIN, State.DOWNLOADING),
    (Event.DOWNLOADED, State.DOWNLOADED),
    (Event.INSTALL, State.INSTALLING),
    (Event.INSTALLED, State.INSTALLED),
    (Event.SWITCH, State.SWITCHING),
    (Event.SWITCHED, State.SWITCHED),
    (Event.STARTED, State.SWITCHED),
    (Event.HEALTHY, State.COMMITTED),
    (Event.REPORTED, State.IDLE),
]


@pytest.mark.parametrize(("key", "target"), sorted(TRANSITIONS.items()))
def test_every_legal_transition(key: tuple[State, Event], target: State) -> None:
    assert next_state(*key) == target


@pytest.mark.parametrize(
    "key",
    [(s, e) for s in State for e in Event if (s, e) not in TRANSITIONS],
)
def test_every_other_transition_is_illegal(key: tuple[State, Event]) -> None:
    with pytest.raises(IllegalTransition):
        next_state(*key)


def test_every_state_is_reachable_and_leads_back_to_idle() -> None:
    reach = {State.IDLE}
    while True:
        more = {t for (s, _e), t in TRANSITIONS.items() if s in reach} - reach
        if not more:
            break
        reach |= more
    assert reach == set(State)
    for state in State:
        seen, todo = set(), [state]
        while todo:
            s = todo.pop()
            seen.add(s)
            todo += [t for (f, _e), t in TRANSITIONS.items() if f == s and t not in seen]
        assert State.IDLE in seen, state


def test_happy_path_persisted_and_round_tripped(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    assert store.load() == Record()  # no file: idle
    rec = store.transition(Event.BEGIN, target="2.0.0", source="1.0.0", sha256="ab", attempt=1)
    for event, state in HAPPY_PATH[1:]:
        rec = store.transition(event)
        assert rec.state == state
        assert store.load() == rec  # what was written is what is read back
    doc = json.loads((tmp_path / "state.json").read_text())
    assert doc["format"] == 1 and doc["state"] == "idle"
    assert doc["target"] == "2.0.0" and doc["source"] == "1.0.0" and doc["attempt"] == 1
    assert not list(tmp_path.glob("*.tmp"))


def test_illegal_transition_leaves_the_file_alone(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.transition(Event.BEGIN, target="2.0.0")
    before = (tmp_path / "state.json").read_bytes()
    with pytest.raises(IllegalTransition):
        store.transition(Event.HEALTHY)
    assert (tmp_path / "state.json").read_bytes() == before


@pytest.mark.parametrize(
    "content",
    [
        b'{"format": 1, "state": "switc',  # half-written (not possible with rename, yet)
        b"",
        b"\x00\x00\x00",
        b"[]",
        b'{"format": 1, "state": "dancing"}',  # unknown state
        b'{"format": 99, "state": "idle"}',  # a format this code does not know
        b'{"format": 1, "state": "switched", "starts": "many"}',
    ],
)
def test_unreadable_state_is_corrupt(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "state.json").write_bytes(content)
    with pytest.raises(CorruptState):
        StateStore(tmp_path).load()


def _provisioned_mid_update(tmp_path: Path) -> Updater:
    root = tmp_path / "root"
    u = Updater(root)
    b1, h1 = make_fake_bundle(tmp_path, "1.0.0")
    u.provision(b1, "1.0.0", h1)
    b2, h2 = make_fake_bundle(tmp_path, "2.0.0")
    u.apply(b2, "2.0.0", h2)
    return u


@pytest.mark.parametrize(
    "content", [b'{"format": 1, "state": "swi', b'{"format": 1, "state": "weird"}']
)
def test_corrupt_state_mid_update_rolls_back_to_committed(tmp_path: Path, content: bytes) -> None:
    u = _provisioned_mid_update(tmp_path)
    assert u.layout.resolve(CURRENT) == "2.0.0"  # switched, not committed
    (u.root / "state.json").write_bytes(content)
    plan = u.prepare_start()
    assert plan.version == "1.0.0" and not plan.health_check
    rec = u.store.load()
    assert rec.state == State.ROLLED_BACK
    assert rec.reason is not None and "update state unreadable" in rec.reason
    assert u.layout.installed() == ["1.0.0"]  # the uncommitted version is gone


def test_corrupt_state_on_a_committed_version_stays(tmp_path: Path) -> None:
    u = _provisioned_mid_update(tmp_path)
    u.prepare_start()
    u.commit()
    (u.root / "state.json").write_bytes(b"garbage")
    plan = u.prepare_start()
    assert plan.version == "2.0.0"
    assert u.layout.resolve(COMMITTED) == "2.0.0"
    assert u.layout.resolve(PREVIOUS) == "1.0.0"


def test_start_cap_turns_a_boot_loop_into_a_rollback(tmp_path: Path) -> None:
    """Power cut (or SIGKILL of the whole service) at every start of the new version."""
    u = _provisioned_mid_update(tmp_path)
    for n in (1, 2, 3):
        plan = u.prepare_start()
        assert plan.version == "2.0.0" and plan.health_check
        assert u.store.load().starts == n
    plan = u.prepare_start()
    assert plan.version == "1.0.0" and not plan.health_check
    rec = u.store.load()
    assert rec.state == State.ROLLED_BACK
    assert rec.reason == "2.0.0 started 3 times without passing its health check"
    outcome = u.pending_outcome()
    assert outcome is not None and outcome.event == "update_rolled_back"
    u.acknowledge()
    assert u.store.load().state == State.IDLE and u.pending_outcome() is None
