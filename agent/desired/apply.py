"""Deciding on, storing and applying desired-state documents on the terminal.

A `desired` payload goes through, in order, and the first failure is the answer:

    no config key in agent.toml          -> refused (never apply what cannot be verified)
    open_envelope: signature, schema, terminal -> refused
    same version and same hash as applied -> ok (the retained message again after a reconnect)
    version <= applied version           -> refused (no rollback, no replay)
    templates fetched (by url) and checked -> failed on error; nothing switched; retried
    stored atomically (agent.desired.store) -> failed on error; nothing switched; retried
    applied to the running agent         -> ok

and every decision is published as a `reported` message (agent.desired.document.reported).

What the agent runs on is the *effective* configuration: agent.toml's values, overridden by the
keys the applied document carries (a key the new document no longer carries goes back to
agent.toml's value). Every setting of CONFIG_SCHEMA takes effect live, none needs a restart:

    status_interval_s, poll_interval_s, debounce_s   the reporter's timing, from its next tick
    paper.low_pct      the reporter adds `media-low` below it (the printer's own signal stays)
    paper.capacity     the paper estimator, and the driver's fallback capacity (ipp, escpos)
    printer/reader.timeout_s   the driver's per-call timeout and the read budget around it,
                       for drivers that have one (ipp, escpos, pcsc; the simulator has none)
    printer.media, kiosk, service_hours   kept in `effective` for the kiosk UI and print jobs;
                       no driver reads them today
    agent.version      handed to the self-update worker (agent.update.worker), which downloads,
                       installs and switches to it, then restarts the agent

Threading: MqttLink's thread only hands payloads over (`submit`); one worker thread fetches,
fsyncs and applies, and when several documents arrive meanwhile only the latest is handled.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import rust_core
from agent.config import AgentConfig
from agent.desired.document import (
    MAX_TEMPLATE_BYTES,
    DocumentError,
    Opened,
    canonical,
    check_template_blob,
    open_envelope,
    reported,
    version_refusal,
)
from agent.desired.store import DesiredStore, StoreError
from agent.devices import BoundedDevice
from agent.reporter import Reporter

log = logging.getLogger(__name__)

#: A failed apply (fetch or disk) is tried again this often while no newer document arrives.
RETRY_S = 60.0
FETCH_TIMEOUT_S = 10.0
NO_KEY = "no config_public_key in agent.toml: desired-state documents cannot be verified"


@dataclass(frozen=True)
class Effective:
    """The settings the agent runs on: agent.toml overridden by the applied document."""

    status_interval_s: float
    poll_interval_s: float
    debounce_s: float
    paper_low_pct: int | None = None
    paper_capacity: int | None = None
    printer_timeout_s: float | None = None
    printer_media: str | None = None
    reader_timeout_s: float | None = None
    kiosk: dict[str, Any] = field(default_factory=dict)
    service_hours: dict[str, Any] | None = None
    desired_version: int | None = None
    desired_hash: str | None = None
    #: The agent version the document names (self-update, agent.update.worker); None: stay.
    agent_version: str | None = None

    @classmethod
    def from_agent_config(cls, cfg: AgentConfig) -> Effective:
        printer = cfg.printer.settings if cfg.printer else {}
        reader = cfg.reader.settings if cfg.reader else {}
        capacity = printer.get("capacity")
        return cls(
            status_interval_s=cfg.intervals.status_interval_s,
            poll_interval_s=cfg.intervals.poll_interval_s,
            debounce_s=cfg.intervals.debounce_s,
            paper_capacity=capacity if isinstance(capacity, int) else None,
            printer_timeout_s=_num(printer.get("timeout_s")),
            reader_timeout_s=_num(reader.get("timeout_s")),
        )

    def with_document(self, opened: Opened | None) -> Effective:
        """These (agent.toml) values overridden by the keys `opened`'s config carries."""
        if opened is None:
            return self
        c: Mapping[str, Any] = opened.document["config"]
        paper, printer, reader = c.get("paper", {}), c.get("printer", {}), c.get("reader", {})
        return replace(
            self,
            status_interval_s=float(c.get("status_interval_s", self.status_interval_s)),
            poll_interval_s=float(c.get("poll_interval_s", self.poll_interval_s)),
            debounce_s=float(c.get("debounce_s", self.debounce_s)),
            paper_low_pct=paper.get("low_pct", self.paper_low_pct),
            paper_capacity=paper.get("capacity", self.paper_capacity),
            printer_timeout_s=_num(printer.get("timeout_s", self.printer_timeout_s)),
            printer_media=printer.get("media", self.printer_media),
            reader_timeout_s=_num(reader.get("timeout_s", self.reader_timeout_s)),
            kiosk={**self.kiosk, **c.get("kiosk", {})},
            service_hours=c.get("service_hours", self.service_hours),
            desired_version=opened.version,
            desired_hash=opened.hash,
            agent_version=(opened.document.get("agent") or {}).get("version"),
        )


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class Target(Protocol):
    """The running agent, as far as applying settings goes (agent.service wires it)."""

    def apply(self, effective: Effective) -> None: ...


class LiveTarget:
    """Applies `Effective` to the running reporter and device drivers, without a restart."""

    #: Drivers whose `capacity` is a fallback from config (the simulator's is its tray).
    CAPACITY_DRIVERS = ("ipp", "escpos")

    def __init__(
        self,
        reporter: Reporter,
        printer: BoundedDevice[Any] | None = None,
        reader: BoundedDevice[Any] | None = None,
        update: Callable[[str | None, int | None], None] | None = None,
    ) -> None:
        self.reporter = reporter
        #: Told the named agent version and the document's version (agent.update.worker.want).
        self.update = update
        self.devices = {"printer": printer, "reader": reader}
        # What the drivers were built with, for when a document stops carrying a setting.
        self._built: dict[tuple[str, str], Any] = {}
        for role, dev in self.devices.items():
            for attr in ("timeout_s", "capacity"):
                if dev is not None and hasattr(dev.driver, attr):
                    self._built[(role, attr)] = getattr(dev.driver, attr)

    def apply(self, effective: Effective) -> None:
        self.reporter.reconfigure(
            status_interval_s=effective.status_interval_s,
            poll_interval_s=effective.poll_interval_s,
            debounce_s=effective.debounce_s,
            paper_low_pct=effective.paper_low_pct,
            paper_capacity=effective.paper_capacity,
            desired=effective.desired_hash,
        )
        self._set("printer", "timeout_s", effective.printer_timeout_s)
        self._set("reader", "timeout_s", effective.reader_timeout_s)
        printer = self.devices["printer"]
        if printer is not None and printer.name in self.CAPACITY_DRIVERS:
            self._set("printer", "capacity", effective.paper_capacity)
        if self.update is not None:
            self.update(effective.agent_version, effective.desired_version)

    def _set(self, role: str, attr: str, value: Any) -> None:
        dev = self.devices[role]
        if dev is None or (role, attr) not in self._built:
            return  # no such device, or its driver has no such setting (the simulator)
        value = self._built[(role, attr)] if value is None else value
        if getattr(dev.driver, attr) == value:
            return
        setattr(dev.driver, attr, value)
        if attr == "timeout_s":
            # The read budget around the driver follows its timeout (see agent.devices).
            dev.budget_s = 2.0 * float(value) + 1.0
        log.info("%s.%s is now %s", role, attr, value)


Fetch = Callable[[str, int], bytes]


def http_fetch(url: str, size: int, timeout_s: float = FETCH_TIMEOUT_S) -> bytes:
    """GET `url`, at most `size` bytes (the signed size) within `timeout_s` in all."""
    deadline = time.monotonic() + timeout_s
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout_s) as resp:
        chunks: list[bytes] = []
        got = 0
        while True:
            if time.monotonic() > deadline:
                raise TimeoutError(f"not complete within {timeout_s:g} s")
            chunk = resp.read(min(65536, size + 1 - got))
            if not chunk:
                break
            chunks.append(chunk)
            got += len(chunk)
            if got > size:
                raise ValueError(f"larger than the signed size {size}")
    return b"".join(chunks)


class Applier:
    """Decides on `desired` payloads, stores and applies good ones, and says so (`reported`)."""

    def __init__(
        self,
        *,
        terminal_id: str,
        key: rust_core.VerifyingKey | None,
        store: DesiredStore,
        base: Effective,
        target: Target,
        publish: Callable[[dict[str, Any]], None],
        server_url: str | None = None,
        fetch: Fetch = http_fetch,
        retry_s: float = RETRY_S,
    ) -> None:
        self.terminal_id = terminal_id
        self.key = key
        self.store = store
        self.base = base
        self.target = target
        self.publish = publish
        self.server_url = server_url
        self.fetch = fetch
        self.retry_s = retry_s
        self.applied: Opened | None = None
        self.applied_raw: bytes | None = None
        self.effective = base
        #: Why the start-up load fell back, reported until the next decision replaces it.
        self.start_problem: str | None = None
        self._warned_no_key = False
        self._lock = threading.Lock()  # one decision at a time (worker, tests, start-up)
        self._cond = threading.Condition()
        self._pending: bytes | None = None
        self._report_state = False
        self._failed: bytes | None = None
        self._retry_at = float("inf")
        self._stopping = False
        self._thread: threading.Thread | None = None

    # -- start-up ------------------------------------------------------------------------------

    def load(self) -> None:
        """Run on what is stored (re-verified), or on agent.toml alone."""
        if self.key is None:
            self._no_key()
            self._apply_live()
            return
        found = self.store.load(self.key, self.terminal_id)
        for problem in found.problems:
            log.error("desired state: %s", problem)
        if found.applied is not None and found.raw is not None:
            self.applied, self.applied_raw = found.applied, found.raw
            log.info(
                "desired state: running version %d (%s) from %s",
                found.applied.version,
                found.applied.hash,
                found.source,
            )
        elif found.problems:
            log.error("desired state: nothing usable stored; running on agent.toml alone")
        if found.problems:
            self.start_problem = "stored document unusable: " + "; ".join(found.problems)
            if found.applied is not None:
                self.start_problem += f"; fell back to version {found.applied.version}"
        self._apply_live()

    # -- decisions -----------------------------------------------------------------------------

    def handle(self, raw: bytes) -> dict[str, Any]:
        """Decide on one `desired` payload; returns the `reported` message (not published)."""
        with self._lock:
            return self._handle(raw)

    def _handle(self, raw: bytes) -> dict[str, Any]:
        if self.key is None:
            self._no_key()  # logged once, not per delivery
            return reported("refused", None, None, None, NO_KEY)
        try:
            opened = open_envelope(raw, self.key, self.terminal_id)
        except DocumentError as e:
            return self._refused(str(e))
        except Exception as e:  # garbage that trips the COSE library is still just refused
            return self._refused(f"{type(e).__name__}: {e}")
        applied = self.applied
        if applied is not None:
            if opened.version == applied.version and opened.hash == applied.hash:
                log.info("desired version %d again: already applied", opened.version)
                self.start_problem = None
                return reported("ok", opened.version, opened.hash, applied)
            refusal = version_refusal(applied, opened)
            if refusal is not None:
                return self._refused(refusal, opened)
        try:
            blobs = self._templates(opened)
            previous = (
                (self.applied_raw, applied)
                if self.applied_raw is not None and applied is not None
                else None
            )
            self.store.commit(raw, opened, blobs, previous)
        except (DocumentError, StoreError) as e:
            log.error("desired version %d not applied: %s", opened.version, e)
            return self._failed_report(raw, opened, str(e))
        self.applied, self.applied_raw = opened, raw
        self.start_problem = None
        self._failed = None
        log.info("desired version %d (%s) stored", opened.version, opened.hash)
        error = self._apply_live()
        return reported("ok", opened.version, opened.hash, opened, error)

    def state(self) -> dict[str, Any] | None:
        """The `reported` message for what runs now (sent on every connect), or None."""
        with self._lock:
            a = self.applied
            if self.start_problem is not None:
                return reported("failed", None, None, a, self.start_problem)
            if self.key is None:
                return reported("refused", None, None, None, NO_KEY)
            if a is None:
                return None
            return reported("ok", a.version, a.hash, a)

    def _templates(self, opened: Opened) -> dict[str, bytes]:
        """The templates not on disk yet, as canonical bytes, each checked against its hash."""
        blobs: dict[str, bytes] = {}
        for entry in opened.document["templates"]:
            sha = entry["sha256"]
            if sha in blobs or self.store.has_template(sha):
                continue
            if "content" in entry:
                blobs[sha] = canonical(entry["content"])  # open_envelope checked its hash
                continue
            blobs[sha] = self._fetch(entry)
        return blobs

    def _fetch(self, entry: dict[str, Any]) -> bytes:
        where = f"template {entry['id']}"
        if not self.server_url:
            raise DocumentError(where, "fetched by url, but agent.toml has no [server] url")
        url = self.server_url + entry["url"]
        size = min(int(entry["size"]), MAX_TEMPLATE_BYTES)
        try:
            data = self.fetch(url, size)
        except urllib.error.HTTPError as e:
            raise DocumentError(where, f"GET {url}: HTTP {e.code}") from None
        except (OSError, ValueError) as e:
            raise DocumentError(where, f"GET {url}: {e}") from None
        try:
            check_template_blob(data, entry)
        except ValueError as e:  # DocumentError, or not JSON at all
            raise DocumentError(where, str(e).removeprefix(f"{where}: ")) from None
        # The signed sha256 is over the canonical bytes, so these are canonical like inline ones.
        return data

    def _apply_live(self) -> str | None:
        self.effective = self.base.with_document(self.applied)
        try:
            self.target.apply(self.effective)
        except Exception as e:
            log.exception("applying the desired settings to the running agent failed")
            return f"stored, but not applied live ({type(e).__name__}: {e}); applies at restart"
        return None

    def _refused(self, error: str, opened: Opened | None = None) -> dict[str, Any]:
        log.warning("desired document refused: %s", error)
        version = opened.version if opened else None
        return reported("refused", version, opened.hash if opened else None, self.applied, error)

    def _failed_report(self, raw: bytes, opened: Opened, error: str) -> dict[str, Any]:
        self._failed = raw
        with self._cond:
            self._retry_at = time.monotonic() + self.retry_s
        return reported("failed", opened.version, opened.hash, self.applied, error)

    def _no_key(self) -> None:
        if not self._warned_no_key:
            log.error("%s; every document will be refused", NO_KEY)
            self._warned_no_key = True

    # -- the worker thread ---------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="desired", daemon=True)
        self._thread.start()

    def submit(self, raw: bytes) -> None:
        """A `desired` payload arrived (any thread, never blocks): the latest one wins."""
        with self._cond:
            self._pending = raw
            self._cond.notify()

    def request_state_report(self) -> None:
        """The link is (re)connected: say what runs now."""
        with self._cond:
            self._report_state = True
            self._cond.notify()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(
                    lambda: (
                        self._stopping
                        or self._pending is not None
                        or self._report_state
                        or time.monotonic() >= self._retry_at
                    ),
                    timeout=max(0.0, min(self._retry_at - time.monotonic(), 3600.0)),
                )
                if self._stopping:
                    return
                raw, self._pending = self._pending, None
                state, self._report_state = self._report_state, False
                if raw is None and time.monotonic() >= self._retry_at:
                    raw = self._failed
                    self._retry_at = float("inf")
                    if raw is not None:
                        log.info("retrying the desired document that failed to apply")
            try:
                if state:
                    msg = self.state()
                    if msg is not None:
                        self.publish(msg)
                if raw is not None:
                    self.publish(self.handle(raw))
            except Exception:
                log.exception("desired-state worker error")


def load_key(path: Path | None) -> rust_core.VerifyingKey | None:
    """The fleet's config public key (PEM, or DER SubjectPublicKeyInfo); None if unusable."""
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as e:
        log.error("cannot read config_public_key %s: %s", path, e.strerror or e)
        return None
    try:
        if b"-----BEGIN" in data:
            key = rust_core.VerifyingKey.from_pem(data)
        else:
            key = rust_core.VerifyingKey.from_spki(data)
    except Exception as e:
        log.error("config_public_key %s is not a public key: %s", path, e)
        return None
    if key.alg != "EdDSA":
        log.error("config_public_key %s is %s; the config key must be EdDSA", path, key.alg)
        return None
    return key
