"""The desired-state store on a real file system: atomic switch, fallback, templates, and a
crash (an exception standing in for SIGKILL) after every step of the write sequence."""

from __future__ import annotations

from pathlib import Path

import pytest

import rust_core
from agent.desired import document
from agent.desired.document import Opened, open_envelope, template_entry
from agent.desired.store import CURRENT, PREVIOUS, DesiredStore
from tests.agent.desired_helpers import doc, form, seal

KEY = rust_core.SigningKey.generate("EdDSA")
VKEY = KEY.verifying_key()


class Crash(Exception):
    pass


def opened(raw: bytes) -> Opened:
    return open_envelope(raw, VKEY, "T-0001")


def entry(version: int) -> dict[str, object]:
    return template_entry("gtgsh-setup", version, form(version))


def blobs(raw: bytes) -> dict[str, bytes]:
    return {
        t["sha256"]: document.canonical(t["content"]) for t in opened(raw).document["templates"]
    }


def commit(store: DesiredStore, raw: bytes, prev: bytes | None) -> None:
    store.commit(raw, opened(raw), blobs(raw), (prev, opened(prev)) if prev else None)


V1 = seal(doc(1, templates=[entry(1)]), KEY)
V2 = seal(doc(2, config={"status_interval_s": 5}, templates=[entry(2)]), KEY)
V3 = seal(doc(3, templates=[entry(3)]), KEY)


def test_commit_load_and_previous(tmp_path: Path) -> None:
    store = DesiredStore(tmp_path / "desired")
    assert store.load(VKEY, "T-0001").applied is None
    commit(store, V1, None)
    commit(store, V2, V1)
    got = DesiredStore(tmp_path / "desired").load(VKEY, "T-0001")
    assert got.raw == V2 and got.source == CURRENT and not got.problems
    assert got.applied is not None and got.applied.version == 2
    assert (tmp_path / "desired" / PREVIOUS).read_bytes() == V1
    # Templates of current and previous are kept; older ones pruned.
    commit(store, V3, V2)
    names = sorted(p.name for p in (tmp_path / "desired" / "templates").iterdir())
    assert names == sorted(f"{s}.json" for s in (*blobs(V3), *blobs(V2)))
    assert not list((tmp_path / "desired").glob("*.tmp"))


@pytest.mark.parametrize(
    "damage",
    ["corrupt", "truncated", "missing", "other-terminal", "template-missing", "template-corrupt"],
)
def test_unusable_current_falls_back_to_previous(tmp_path: Path, damage: str) -> None:
    root = tmp_path / "desired"
    store = DesiredStore(root)
    commit(store, V1, None)
    commit(store, V2, V1)
    current = root / CURRENT
    [sha2] = blobs(V2)
    if damage == "corrupt":
        data = bytearray(V2)
        data[len(data) // 2] ^= 0x20
        current.write_bytes(bytes(data))
    elif damage == "truncated":
        current.write_bytes(V2[:40])
    elif damage == "missing":
        current.unlink()
    elif damage == "other-terminal":
        current.write_bytes(seal(doc(2, terminal="T-0002"), KEY))
    elif damage == "template-missing":
        (root / "templates" / f"{sha2}.json").unlink()
    else:
        (root / "templates" / f"{sha2}.json").write_bytes(b'{"title":"evil"}')
    got = DesiredStore(root).load(VKEY, "T-0001")
    assert got.raw == V1 and got.source == PREVIOUS
    assert got.problems and got.problems[0].startswith(CURRENT)


def test_nothing_usable(tmp_path: Path) -> None:
    root = tmp_path / "desired"
    store = DesiredStore(root)
    commit(store, V1, None)
    (root / CURRENT).write_bytes(b"garbage")
    got = DesiredStore(root).load(VKEY, "T-0001")
    assert got.applied is None and got.problems
    # Signed by another key: as good as garbage.
    other = rust_core.SigningKey.generate("EdDSA")
    (root / CURRENT).write_bytes(seal(doc(9), other))
    assert DesiredStore(root).load(VKEY, "T-0001").applied is None


def steps_of_a_commit(tmp_path: Path) -> list[str]:
    seen: list[str] = []
    store = DesiredStore(tmp_path / "probe", step=seen.append)
    commit(store, V1, None)
    seen.clear()
    commit(store, V2, V1)
    return seen


def test_crash_after_every_step_leaves_old_or_new(tmp_path: Path) -> None:
    steps = steps_of_a_commit(tmp_path)
    assert steps == [
        *("template", "templates_synced", "current_tmp", "previous", "current"),
        *("synced", "pruned"),
    ]
    outcomes = []
    for i, step in enumerate(steps):
        root = tmp_path / f"crash-{i}"
        commit(DesiredStore(root), V1, None)

        def boom(name: str, at: str = step) -> None:
            if name == at:
                raise Crash(at)

        with pytest.raises(Crash):
            commit(DesiredStore(root, step=boom), V2, V1)
        got = DesiredStore(root).load(VKEY, "T-0001")
        assert got.raw in (V1, V2), step
        assert not got.problems, (step, got.problems)
        assert not list(root.rglob("*.tmp")), step
        outcomes.append(got.raw == V2)
        # And the agent carries on from there: the next commit works.
        prev = got.raw
        commit(DesiredStore(root), V3, prev)
        assert DesiredStore(root).load(VKEY, "T-0001").raw == V3
    # Before the rename the old one stands; from it on the new one.
    assert outcomes == [False, False, False, False, True, True, True]


def test_torn_writes_of_temporary_files_are_harmless(tmp_path: Path) -> None:
    """What a power cut mid-write leaves (half a tmp file) is ignored and cleaned up."""
    root = tmp_path / "desired"
    commit(DesiredStore(root), V1, None)
    (root / (CURRENT + ".tmp")).write_bytes(V2[:100])
    (root / "templates" / ("0" * 64 + ".json.tmp")).write_bytes(b"{")
    got = DesiredStore(root).load(VKEY, "T-0001")
    assert got.raw == V1 and not got.problems
    assert not list(root.rglob("*.tmp"))
