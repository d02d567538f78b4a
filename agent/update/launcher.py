"""What systemd starts: recover the update state, run the current version, judge a new one.

    python -m agent.update.launcher --root /var/lib/fleet-agent/versions \\
        [--deadline 120] [--max-starts 3] -- run --config /etc/fleet-agent/agent.toml

This module is the trusted part: it runs from the base installation (the interpreter's
site-packages), never from a downloaded version, and imports only agent.update (no MQTT, no TUF).
Each start:

1. `Updater.prepare_start()` finishes or undoes whatever a kill or power cut interrupted, and
   counts one more start of a switched version (the cap turns a crash loop into a rollback).
2. Runs `python -P -m <module> ARGS` with the version directory first on `sys.path`, and
   `FLEET_UPDATE_ROOT` / `FLEET_UPDATE_VERSION` in its environment for the health probe.
3. A switched version is watched: all health marks before `--deadline` -> commit; an explicit
   failure or the deadline -> stop it and roll back; an exit before the commit -> counted, and
   rolled back at the cap. Then the launcher exits and Restart=always starts it again, on
   whichever version `current` now names.

SIGTERM/SIGINT/SIGHUP are passed to the agent; a stop asked for is never counted as a crash.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from agent.update.health import (
    DEFAULT_DEADLINE_S,
    ROOT_ENV,
    VERSION_ENV,
    HealthCheck,
    Verdict,
)
from agent.update.layout import COMMITTED, CURRENT, Layout, read_manifest
from agent.update.updater import (
    DEFAULT_MAX_STARTS,
    NoWorkingVersion,
    StartPlan,
    Updater,
    checkpoint,
)

log = logging.getLogger("agent.update.launcher")

EXIT_FAILED = 1
EXIT_USAGE = 2
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m agent.update.launcher",
        description="Run the current agent version; health-check and roll back updates.",
    )
    p.add_argument("--root", required=True, type=Path, help="the versions root (A/B layout)")
    p.add_argument("--deadline", type=float, default=DEFAULT_DEADLINE_S, metavar="SECONDS")
    p.add_argument("--max-starts", type=int, default=DEFAULT_MAX_STARTS, metavar="N")
    p.add_argument("--poll", type=float, default=0.5, metavar="SECONDS", help=argparse.SUPPRESS)
    p.add_argument("--stop-timeout", type=float, default=15.0, metavar="SECONDS")
    p.add_argument("args", nargs=argparse.REMAINDER, help="-- then the agent's arguments")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    agent_args = args.args[1:] if args.args[:1] == ["--"] else args.args
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    updater = Updater(args.root, max_starts=args.max_starts)
    try:
        plan = updater.prepare_start()
    except NoWorkingVersion as e:
        log.critical("%s", e)
        return EXIT_FAILED
    except Exception:
        # Our own bug or a broken disk: still run something rather than nothing.
        log.exception("update recovery failed; starting the current version unchecked")
        fallback = _fallback_plan(Layout(args.root))
        if fallback is None:
            return EXIT_FAILED
        plan = fallback
    return Supervisor(updater, plan, agent_args, args.deadline, args.poll, args.stop_timeout).run()


def _fallback_plan(layout: Layout) -> StartPlan | None:
    from agent.update.state import Record

    for pointer in (CURRENT, COMMITTED):
        v = layout.resolve(pointer)
        if v is not None and layout.is_complete(v):
            vdir = layout.version_dir(v)
            return StartPlan(v, vdir, read_manifest(vdir).module, False, Record())
    return None


class Supervisor:
    def __init__(
        self,
        updater: Updater,
        plan: StartPlan,
        agent_args: list[str],
        deadline_s: float,
        poll_s: float,
        stop_timeout_s: float,
    ) -> None:
        self.updater = updater
        self.plan = plan
        self.agent_args = agent_args
        self.check = HealthCheck(plan.version, deadline_s) if plan.health_check else None
        self.poll_s = poll_s
        self.stop_timeout_s = stop_timeout_s
        self.stopping = False
        self.child: subprocess.Popen[bytes] | None = None

    def run(self) -> int:
        plan = self.plan
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(plan.path), os.environ.get("PYTHONPATH")) if p
        )
        env[ROOT_ENV] = str(self.updater.root)
        env[VERSION_ENV] = plan.version
        cmd = [sys.executable, "-P", "-m", plan.module, *self.agent_args]
        log.info(
            "starting agent %s%s",
            plan.version,
            f" (health check, start {plan.record.starts})" if self.check else "",
        )
        for sig in FORWARDED:
            signal.signal(sig, self._on_signal)
        self.child = subprocess.Popen(cmd, env=env)
        started = time.monotonic()
        while True:
            try:
                rc = self.child.wait(timeout=self.poll_s)
                break
            except subprocess.TimeoutExpired:
                pass
            if self.check is None or self.stopping:
                continue
            result = self.check.check(self.updater.root, time.monotonic() - started)
            if result.verdict == Verdict.PASS:
                checkpoint("health_passed")
                self.updater.commit()
                self.check = None
            elif result.verdict in (Verdict.FAIL, Verdict.TIMEOUT):
                assert result.reason is not None
                self._stop_child()
                self.updater.rollback(result.reason)
                return EXIT_FAILED
        how = f"exited with status {rc}" if rc >= 0 else f"killed by {signal.Signals(-rc).name}"
        log.info("agent %s %s", plan.version, how)
        if self.check is not None and not self.stopping:
            # It may have proved itself between the last poll and its exit.
            result = self.check.check(self.updater.root, 0)
            if result.verdict == Verdict.PASS:
                self.updater.commit()
            elif result.verdict == Verdict.FAIL:
                assert result.reason is not None
                self.updater.rollback(result.reason)
                return EXIT_FAILED
            else:
                self.updater.crashed(how)
                return rc if rc > 0 else EXIT_FAILED
        return rc if rc >= 0 else 128 - rc

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            self.child.send_signal(signum)

    def _stop_child(self) -> None:
        assert self.child is not None
        if self.child.poll() is not None:
            return
        self.child.terminate()
        try:
            self.child.wait(self.stop_timeout_s)
        except subprocess.TimeoutExpired:
            self.child.kill()
            self.child.wait()


if __name__ == "__main__":
    raise SystemExit(main())
