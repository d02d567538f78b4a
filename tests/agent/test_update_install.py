"""Installing a bundle into versions/<v>/: the good case and every refusal, nothing left behind."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from agent.update import install as install_mod
from agent.update.install import InstallError, Limits, install, tree_sha256
from agent.update.layout import Layout, read_manifest
from agent.update.state import State
from agent.update.updater import Updater
from tests.agent.test_update_support import (
    file_member,
    make_fake_bundle,
    make_fake_dir,
    make_tar,
    sha256,
)

MANIFEST = b'{"v": 1, "version": "2.0.0", "module": "fakeagent"}'


def _layout(tmp_path: Path) -> Layout:
    layout = Layout(tmp_path / "root")
    layout.ensure()
    return layout


def _nothing_left(layout: Layout) -> None:
    assert list(layout.versions.iterdir()) == []


def test_good_bundle_installs_read_only_and_complete(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    bundle, digest = make_fake_bundle(tmp_path, "2.0.0")
    vdir = install(bundle, "2.0.0", digest, layout)
    assert vdir == layout.versions / "2.0.0"
    assert layout.is_complete("2.0.0")
    assert read_manifest(vdir).module == "fakeagent"
    assert not (vdir / "fakeagent.py").stat().st_mode & stat.S_IWUSR  # never modified again
    assert list((vdir / "__pycache__").glob("fakeagent.*.pyc"))  # compiled before sealing
    # The same bundle again is a no-op, not an error.
    assert install(bundle, "2.0.0", "sha256:" + digest.upper(), layout) == vdir
    assert layout.installed() == ["2.0.0"]


def test_directory_bundle_uses_the_tree_digest(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    src = make_fake_dir(tmp_path / "src", "2.0.0")
    vdir = install(src, "2.0.0", tree_sha256(src), layout)
    assert tree_sha256(vdir) == tree_sha256(src)
    with pytest.raises(InstallError) as e:
        install(src, "2.0.0", sha256(src / "fakeagent.py"), layout)
    assert e.value.kind == "bad_hash"


def test_wrong_sha256_is_refused_before_unpacking(tmp_path: Path) -> None:
    """Arbitrary installation: a bundle whose hash is not the signed one."""
    layout = _layout(tmp_path)
    bundle, _digest = make_fake_bundle(tmp_path, "2.0.0")
    with pytest.raises(InstallError) as e:
        install(bundle, "2.0.0", hashlib.sha256(b"other").hexdigest(), layout)
    assert e.value.kind == "bad_hash"
    _nothing_left(layout)


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("../evil.py", "unsafe_path"),
        ("a/../../evil.py", "unsafe_path"),
        ("/etc/evil.py", "unsafe_path"),
        ("a\\..\\evil.py", "unsafe_path"),
    ],
)
def test_paths_leaving_the_bundle_are_refused(tmp_path: Path, name: str, kind: str) -> None:
    layout = _layout(tmp_path)
    bundle = make_tar(
        tmp_path / "b.tar.gz",
        [
            file_member("fleet-bundle.json", MANIFEST),
            file_member("fakeagent.py", b"print(1)\n"),
            file_member(name, b"pwned"),
        ],
    )
    with pytest.raises(InstallError) as e:
        install(bundle, "2.0.0", sha256(bundle), layout)
    assert e.value.kind == kind
    _nothing_left(layout)
    assert not (tmp_path / "evil.py").exists() and not (layout.root / "evil.py").exists()


@pytest.mark.parametrize("link", [tarfile.SYMTYPE, tarfile.LNKTYPE])
def test_links_are_refused(tmp_path: Path, link: bytes) -> None:
    layout = _layout(tmp_path)
    info = tarfile.TarInfo("fakeagent.py")
    info.type = link
    info.linkname = "/etc/passwd"
    bundle = make_tar(
        tmp_path / "b.tar.gz", [file_member("fleet-bundle.json", MANIFEST), (info, None)]
    )
    with pytest.raises(InstallError) as e:
        install(bundle, "2.0.0", sha256(bundle), layout)
    assert e.value.kind == "unsafe_path"
    _nothing_left(layout)


def test_devices_and_fifos_are_refused(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    info = tarfile.TarInfo("fifo")
    info.type = tarfile.FIFOTYPE
    bundle = make_tar(tmp_path / "b.tar.gz", [(info, None)])
    with pytest.raises(InstallError) as e:
        install(bundle, "2.0.0", sha256(bundle), layout)
    assert e.value.kind == "unsupported_entry"


def test_symlink_in_a_directory_bundle_is_refused(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    src = make_fake_dir(tmp_path / "src", "2.0.0")
    os.symlink("/etc/passwd", src / "passwd")
    with pytest.raises(InstallError) as e:
        install(src, "2.0.0", tree_sha256(src), layout)
    assert e.value.kind == "unsafe_path"
    _nothing_left(layout)


def test_tar_bomb_stops_at_the_cap(tmp_path: Path) -> None:
    """64 MiB of zeros compress to ~64 KiB; the cap stops the unpacking at 1 MiB."""
    layout = _layout(tmp_path)
    bundle = tmp_path / "bomb.tar.gz"
    with tarfile.open(bundle, "w:gz") as tf:
        tf.addfile(tarfile.TarInfo("fleet-bundle.json"), io.BytesIO(b""))
        info = tarfile.TarInfo("zeros.bin")
        info.size = 64 << 20
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    assert bundle.stat().st_size < 1 << 20
    with pytest.raises(InstallError) as e:
        install(bundle, "2.0.0", sha256(bundle), layout, Limits(max_unpacked_bytes=1 << 20))
    assert e.value.kind == "too_large"
    assert "more than 1048576 bytes" in e.value.reason
    _nothing_left(layout)


def test_too_many_entries_and_oversized_download_are_refused(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    bundle = make_tar(tmp_path / "many.tar.gz", [file_member(f"f{i}", b"") for i in range(50)])
    with pytest.raises(InstallError) as e:
        install(bundle, "2.0.0", sha256(bundle), layout, Limits(max_entries=10))
    assert e.value.kind == "too_large"
    with pytest.raises(InstallError) as e:
        install(bundle, "2.0.0", sha256(bundle), layout, Limits(max_bundle_bytes=100))
    assert e.value.kind == "too_large"
    _nothing_left(layout)


def test_existing_version_with_other_content_is_refused(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    good, h_good = make_fake_bundle(tmp_path, "2.0.0", "good")
    other, h_other = make_fake_bundle(tmp_path, "2.0.0", "exit")
    vdir = install(good, "2.0.0", h_good, layout)
    before = tree_sha256(vdir)
    with pytest.raises(InstallError) as e:
        install(other, "2.0.0", h_other, layout)
    assert e.value.kind == "version_exists"
    assert tree_sha256(vdir) == before
    assert layout.installed() == ["2.0.0"]
    assert not list(layout.versions.glob("*.partial"))


def test_bundle_naming_another_version_or_without_entry_is_refused(tmp_path: Path) -> None:
    layout = _layout(tmp_path)
    bundle, digest = make_fake_bundle(tmp_path, "2.0.0")
    with pytest.raises(InstallError) as e:
        install(bundle, "3.0.0", digest, layout)
    assert e.value.kind == "not_a_bundle" and "says it is 2.0.0" in e.value.reason
    no_entry = make_tar(tmp_path / "x.tar.gz", [file_member("README", b"hello")])
    with pytest.raises(InstallError) as e:
        install(no_entry, "2.0.0", sha256(no_entry), layout)
    assert e.value.kind == "not_a_bundle" and "agent.cli" in e.value.reason
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(InstallError) as e:
        install(garbage, "2.0.0", sha256(garbage), layout)
    assert e.value.kind == "not_a_bundle"
    _nothing_left(layout)


def test_disk_full_is_a_clean_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = _layout(tmp_path)
    src = make_fake_dir(tmp_path / "src", "2.0.0")
    (src / "big.bin").write_bytes(os.urandom(300_000))
    bundle = tmp_path / "b.tar.gz"
    with tarfile.open(bundle, "w:gz") as tf:
        for p in sorted(src.iterdir()):
            tf.add(p, arcname=p.name)
    calls = 0

    def write_all(fd: int, data: bytes) -> None:
        nonlocal calls
        calls += 1
        if calls > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        os.write(fd, data)

    monkeypatch.setattr(install_mod, "_write_all", write_all)
    with pytest.raises(InstallError) as e:
        install(bundle, "2.0.0", sha256(bundle), layout)
    assert e.value.kind == "disk_full"
    assert "no space left" in e.value.reason
    _nothing_left(layout)


def test_updater_records_an_install_failure(tmp_path: Path) -> None:
    root = tmp_path / "root"
    u = Updater(root)
    b1, h1 = make_fake_bundle(tmp_path, "1.0.0")
    u.provision(b1, "1.0.0", h1)
    b2, _h2 = make_fake_bundle(tmp_path, "2.0.0")
    u.begin("2.0.0", "0" * 64)
    u.downloaded(b2)
    with pytest.raises(InstallError):
        u.install()
    rec = u.store.load()
    assert rec.state == State.FAILED and rec.reason is not None and "bad_hash" in rec.reason
    outcome = u.pending_outcome()
    assert outcome is not None and outcome.event == "update_failed"
    assert outcome.version == "2.0.0" and outcome.from_version == "1.0.0"
    u.acknowledge()
    assert u.store.load().state == State.IDLE
    assert u.layout.installed() == ["1.0.0"]
