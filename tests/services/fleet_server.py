"""A real `fleet serve` for end-to-end and browser tests: its own Mosquitto, SQLite in a temp dir,
dev mode, on a free port; stopped with its broker and its folder removed afterwards."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.services.ports import free_port

BIN = Path(sys.executable).parent


def wait_until(check: Callable[[], Any], timeout: float, what: str, every: float = 0.02) -> Any:
    """`check()`'s first truthy value; an HTTP error counts as "not yet" (the server starting)."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(httpx.HTTPError):
            value = check()
            if value:
                return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    data: Path
    url: str
    env: dict[str, str]

    def fleet(self, *args: str) -> str:
        """Run the `fleet` command line against this server's data dir; its stdout."""
        out = subprocess.run(
            [str(BIN / "fleet"), *args], env=self.env, capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stderr
        return out.stdout


@dataclass
class Server(Running):
    """A running server with an API token for `get`."""

    token: str = ""

    def get(self, path: str) -> Any:
        r = httpx.get(
            self.url + path,
            headers={"Authorization": f"Bearer {self.token}"} if self.token else {},
            timeout=5,
            trust_env=False,
        )
        r.raise_for_status()
        return r.json() if "json" in r.headers.get("content-type", "") else r.text


@contextlib.contextmanager
def fleet_serve(
    prefix: str,
    *,
    status_interval_s: int,
    ready_timeout_s: float = 20.0,
    extra_env: Mapping[str, str] | None = None,
) -> Iterator[Running]:
    # /tmp, open to the `mosquitto` user the broker drops to (pytest's tmp_path is 0700).
    data = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(data, 0o755)
    port = free_port()
    env = {
        **os.environ,
        "FLEET_DEV_MODE": "1",
        "FLEET_DATA_DIR": str(data),
        "FLEET_API_PORT": str(port),
        "FLEET_STATUS_INTERVAL_S": str(status_interval_s),
    }
    for name in ("FLEET_BROKER_URL", "FLEET_DATABASE_URL", "DATABASE_URL", "FLEET_CONFIG"):
        env.pop(name, None)
    env.update(extra_env or {})
    url = f"http://127.0.0.1:{port}"
    running: Running | None = None
    try:
        running = Running(launch(data, env, url, ready_timeout_s), data, url, env)
        yield running
    finally:
        # running.proc: a test may have replaced it (launched again on the same data dir).
        if running is not None and running.proc.poll() is None:
            proc = running.proc
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        stop_broker(data)
        shutil.rmtree(data, ignore_errors=True)


def launch(
    data: Path, env: Mapping[str, str], url: str, ready_timeout_s: float = 20.0
) -> subprocess.Popen[bytes]:
    """Start `fleet serve` (output appended to data/serve.log) and wait until it is ready."""
    with (data / "serve.log").open("ab") as log:
        proc = subprocess.Popen(
            [str(BIN / "fleet"), "serve", "--log-level", "warning"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(
            # trust_env=False: a proxy in the environment must not see loopback requests.
            lambda: httpx.get(url + "/healthz", trust_env=False).json()["status"] == "ok",
            ready_timeout_s,
            "fleet serve to be ready",
        )
    except AssertionError:
        print((data / "serve.log").read_text(errors="replace")[-3000:])  # why it did not
        proc.kill()
        proc.wait()
        raise
    return proc


def stop_broker(data: Path) -> None:
    """End the server's Mosquitto (it runs in its own session and outlives a killed server)."""
    pid_file = data / "mosquitto" / "mosquitto.pid"
    if pid_file.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
