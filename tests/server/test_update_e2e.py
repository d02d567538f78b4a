"""Self-update end to end with real processes: `fleet serve` (its Mosquitto, SQLite, TUF
repository) and four real agents, each installed from a built bundle into its own A/B root and run
by the update launcher under a supervisor that restarts it as systemd's Restart=always does.

A good release rolls through the waves (canary, 50 %, 100 %) to every terminal; a bad release
(it crashes before passing its health check) is rolled back on the canary, the rollout pauses
before its next wave, the other terminals never hear of it, and every terminal ends on a version
that works.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.update.layout import COMMITTED, CURRENT, Layout
from agent.update.state import State, StateStore
from agent.update.updater import KILL_AT_ENV, Updater
from fleet.server.updates.bundle import build_bundle
from tests.services.fleet_server import BIN, Server, wait_until

TERMINALS = ["T1", "T2", "T3", "T4"]
ROOT = Path(__file__).resolve().parents[2]


class Supervised:
    """`python -m agent.update.launcher … -- run --config C`, restarted whenever it exits."""

    def __init__(
        self, root: Path, config: Path, log: Path, env: dict[str, str] | None = None
    ) -> None:
        self.env = {**os.environ, **(env or {})}
        self.cmd = [
            sys.executable, "-m", "agent.update.launcher", "--root", str(root),
            "--deadline", "30", "--poll", "0.1", "--max-starts", "3",
            "--", "run", "--config", str(config),
        ]  # fmt: skip
        self.log = log.open("ab")
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.proc = subprocess.Popen(
                self.cmd, cwd=ROOT, env=self.env, stdout=self.log, stderr=subprocess.STDOUT
            )
            self.starts += 1
            self.proc.wait()
            self._stop.wait(0.3)  # RestartSec

    def stop(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._thread.join(25)
        self.log.close()


def provision(s: Server, tid: str) -> Path:
    """`fleet terminals add` with the server URL: the config gets [server] and [update], and the
    update repository's trusted root is written beside it."""
    path = s.data / f"{tid}.toml"
    s.fleet(
        "terminals", "add", tid, "--site", "WH-HALL", "--model", "sim",
        "--data-dir", str(s.data), "--out", str(path),
        "--config-key", str(s.data / "fleet-config.pub"),
        "--server-url", s.url, "--update-root", str(s.data / "update-root.json"),
    )  # fmt: skip
    text = path.read_text()
    assert f'[update]\ntrusted_root = "{s.data / "update-root.json"}"' in text
    text = re.sub(r"^data_dir = .*$", f'data_dir = "{s.data / tid}"', text, flags=re.M)
    text = re.sub(r"^status_interval_s = .*$", "status_interval_s = 5", text, flags=re.M)
    path.write_text(text.replace("[update]\n", "[update]\nretry_delays_s = [0.5]\n"))
    return path


def call(s: Server, token: str, method: str, path: str, body: Any = None) -> Any:
    r = httpx.request(
        method,
        s.url + path,
        json=body,
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
        trust_env=False,
    )
    assert r.status_code < 300, r.text
    return r.json()


def start_agent(
    s: Server, tid: str, factory: Path, env: dict[str, str] | None = None
) -> tuple[Path, Supervised]:
    """Provision `tid`, install the factory version in its A/B root, run it supervised."""
    config = provision(s, tid)
    root = s.data / f"{tid}-versions"
    Updater(root).provision(factory, "1.0.0", _sha256(factory))
    return root, Supervised(root, config, s.data / f"agent-{tid}.log", env)


@pytest.fixture
def fleet_agents(server: Server, tmp_path: Path) -> Iterator[dict[str, Path]]:
    """Four terminals provisioned with the config key and the TUF root, on agent 1.0.0."""
    s = server
    fleet = BIN / "fleet"
    subprocess.run(
        [str(fleet), "updates", "init", "--root-key-dir", str(tmp_path / "root-keys")],
        env=s.env, check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    factory = build_bundle("1.0.0", tmp_path / "factory")
    roots: dict[str, Path] = {}
    supervised: list[Supervised] = []
    try:
        for tid in TERMINALS:
            roots[tid], sup = start_agent(s, tid, factory)
            supervised.append(sup)
        wait_until(
            lambda: all(s.get(f"/api/v1/terminals/{t}")["online"] for t in TERMINALS),
            30,
            "four agents online",
        )
        yield roots
    finally:
        for sup in supervised:
            sup.stop()
        for tid in TERMINALS:
            log = s.data / f"agent-{tid}.log"
            if log.exists():
                print(f"--- {tid}\n" + log.read_text(errors="replace")[-4000:])


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def publish(s: Server, tmp_path: Path, version: str, *, broken: bool = False) -> None:
    bundle = build_bundle(version, tmp_path / f"release-{version}")
    if broken:
        bundle = _break(bundle, version, tmp_path)
    subprocess.run(
        [str(BIN / "fleet"), "updates", "publish", str(bundle)],
        env=s.env, check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def _break(bundle: Path, version: str, tmp_path: Path) -> Path:
    """The release with a bug: its agent dies at start, before it can prove itself healthy."""
    src = tmp_path / f"broken-{version}"
    with tarfile.open(bundle) as tf:
        tf.extractall(src, filter="data")
    service = src / "agent" / "service.py"
    text = service.read_text()
    text = text.replace(
        "def _run(cfg: AgentConfig) -> int:\n",
        "def _run(cfg: AgentConfig) -> int:\n"
        '    raise RuntimeError("release bug: crashes before its first report")\n',
        1,
    )
    service.write_text(text)
    out = tmp_path / f"broken-{version}.tar.gz"
    with tarfile.open(out, "w:gz") as tf:
        for p in sorted(src.rglob("*")):
            tf.add(p, arcname=str(p.relative_to(src)), recursive=False)
    return out


def rollout(
    s: Server,
    token: str,
    version: str,
    terminals: list[str] = TERMINALS,
    waves: list[int | str] | None = None,
) -> dict[str, Any]:
    body = {
        "version": version,
        "target": {"terminals": terminals},
        "waves": waves or [1, "50%", "100%"],
        "override_window": True,
        "per_terminal_timeout_s": 180,
        "failure_action": "pause",
    }
    return call(s, token, "POST", "/api/v1/rollouts", body)  # type: ignore[no-any-return]


def version_count(s: Server) -> dict[str, float]:
    """fleet_agent_version_terminals from /metrics: version -> terminals."""
    return {
        smp.labels["version"]: smp.value
        for family in text_string_to_metric_families(s.get("/metrics"))
        if family.name == "fleet_agent_version_terminals"
        for smp in family.samples
    }


def running_version(s: Server, tid: str) -> str | None:
    t = s.get(f"/api/v1/terminals/{tid}")
    return (t.get("versions") or {}).get("agent") or t.get("agent_version")


def test_a_good_release_reaches_every_wave_and_a_bad_one_stops_at_the_canary(
    server: Server, fleet_agents: dict[str, Path], tmp_path: Path
) -> None:
    s = server
    admin = s.fleet("tokens", "create", "--role", "admin", "--name", "update-e2e").split()[0]
    assert all(running_version(s, t) == "1.0.0" for t in TERMINALS)

    # A good release: the canary, then half, then everyone.
    publish(s, tmp_path, "1.1.0")
    plan = rollout(s, admin, "1.1.0")
    rid = plan["id"]
    assert [len(w["terminals"]) for w in plan["waves"]] == [1, 1, 2]
    done = wait_until(
        lambda: (r := s.get(f"/api/v1/rollouts/{rid}"))["state"] == "completed" and r,
        240,
        "the 1.1.0 rollout to complete",
        every=0.5,
    )
    assert done["counts"].get("succeeded") == 4, done["counts"]
    wait_until(lambda: all(running_version(s, t) == "1.1.0" for t in TERMINALS), 30, "all on 1.1.0")
    for tid, root in fleet_agents.items():
        layout = Layout(root)
        assert layout.resolve(CURRENT) == layout.resolve(COMMITTED) == "1.1.0", tid
        assert StateStore(root).load().state == State.IDLE, tid  # outcome reported once
    wait_until(
        lambda: version_count(s).get("1.1.0") == 4, 20, "the version metric to show 4 on 1.1.0"
    )

    # A bad release: the canary rolls back, the rollout pauses before its second wave.
    publish(s, tmp_path, "1.2.0", broken=True)
    plan = rollout(s, admin, "1.2.0")
    rid = plan["id"]
    canary = plan["waves"][0]["terminals"][0]["id"]
    paused = wait_until(
        lambda: (r := s.get(f"/api/v1/rollouts/{rid}"))["state"] == "paused" and r,
        240,
        "the 1.2.0 rollout to pause",
        every=0.5,
    )
    states = {t["id"]: t for w in paused["waves"] for t in w["terminals"]}
    assert states[canary]["state"] == "rolled_back", states[canary]
    assert "before passing its health check (3 starts)" in states[canary]["reason"], states[canary]
    assert paused["current_wave"] == 0
    assert not any(w["started"] for w in paused["waves"][1:])
    others = [t for t in TERMINALS if t != canary]
    assert all(states[t]["state"] == "pending" for t in others)

    # Nobody ends on the broken version; the canary is back on 1.1.0 and reporting.
    wait_until(lambda: running_version(s, canary) == "1.1.0", 30, "the canary back on 1.1.0")
    for tid, root in fleet_agents.items():
        layout = Layout(root)
        assert layout.resolve(CURRENT) == "1.1.0", tid
        assert "1.2.0" not in layout.installed(), tid
        if tid != canary:
            attempt = root.parent / tid / "update" / "attempt.json"
            assert not attempt.exists() or json.loads(attempt.read_text())["version"] != "1.2.0"


def test_a_kill_in_the_middle_of_an_install_leaves_the_terminal_working_and_is_reported(
    server: Server, tmp_path: Path
) -> None:
    """SIGKILL while the bundle is being unpacked (a power cut): the next start fails the update
    (`interrupted while installing`), the terminal runs its version, the rollout pauses."""
    s = server
    s.fleet("updates", "init", "--root-key-dir", str(tmp_path / "root-keys"))
    admin = s.fleet("tokens", "create", "--role", "admin", "--name", "kill-e2e").split()[0]
    factory = build_bundle("1.0.0", tmp_path / "factory")
    root, sup = start_agent(s, "K1", factory, {KILL_AT_ENV: "install_unpacking"})
    try:
        wait_until(lambda: s.get("/api/v1/terminals/K1")["online"], 30, "K1 online")
        publish(s, tmp_path, "1.1.0")
        rid = rollout(s, admin, "1.1.0", ["K1"], [1])["id"]
        paused = wait_until(
            lambda: (r := s.get(f"/api/v1/rollouts/{rid}"))["state"] == "paused" and r,
            120,
            "the rollout to pause",
            every=0.5,
        )
        (k1,) = paused["waves"][0]["terminals"]
        assert k1["state"] == "failed" and "interrupted while installing" in k1["reason"], k1
        assert sup.starts >= 2  # killed once, started again
        layout = Layout(root)
        assert layout.resolve(CURRENT) == layout.resolve(COMMITTED) == "1.0.0"
        assert layout.installed() == ["1.0.0"]
        assert not list(layout.versions.glob("*.partial"))
        assert not any((s.data / "K1" / "update" / "downloads").iterdir())
        # Up again on 1.0.0: it applied the document that no longer names 1.1.0 and reports it.
        # (The dashboard shows it online only after the presence hold: a flapping link is
        # not called back at once.)
        t = wait_until(
            lambda: (
                (t := s.get("/api/v1/terminals/K1"))["desired_state"]["drift"] is False
                and t["desired_state"]["desired_version"] >= 2
                and (t["status"] or {}).get("desired") == t["desired_state"]["desired_hash"]
                and t
            ),
            30,
            "K1 to report the document without the failed target",
        )
        assert t["status"]["agent"] == "1.0.0"
    finally:
        sup.stop()
        print((s.data / "agent-K1.log").read_text(errors="replace")[-3000:])
