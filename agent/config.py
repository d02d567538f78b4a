"""`agent.toml`: what `fleet-agent run --config agent.toml` needs, validated up front.

Plain dataclasses and explicit checks (no pydantic): the agent runs on small kiosk PCs and must not
pull in the server's dependencies. Every problem becomes one `ConfigError` whose message names the
file and the field ("agent.toml: printer.driver: unknown driver 'ipx' (expected ipp, escpos, sim)"),
so an operator reading the journal knows what to fix without a traceback.

Layout (see packaging/agent.example.toml):

    terminal_id = "T-0001"
    data_dir = "/var/lib/fleet-agent"
    config_public_key = "/etc/fleet-agent/fleet-config.pub"   # optional, desired-state apply
    log_level = "info"                                         # optional

    [broker]          url, username (default: terminal_id), password | password_file, ca_file, ...
    [intervals]       status_interval_s, poll_interval_s, debounce_s
    [outbox]          budget_bytes
    [server]          url = "https://fleet.example.org" (optional: where large form templates
                      named by a desired-state document are fetched from)
    [update]          trusted_root = "/etc/fleet-agent/update-root.json" (the TUF root provisioned
                      with the agent; without it the agent never updates itself), url (optional:
                      default <server url>/api/v1/updates/), retry_delays_s = [5, 30, 120]
    [printer]         driver = "ipp" | "escpos" | "sim"; every other key goes to the driver
    [reader]          driver = "pcsc" | "sim"; every other key goes to the driver
"""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

from agent.report import TERMINAL_ID

PRINTER_DRIVERS = ("ipp", "escpos", "sim")
READER_DRIVERS = ("pcsc", "sim")
LOG_LEVELS = ("debug", "info", "warning", "error")

#: Below this an outbox cannot hold even a short outage's worth of reports.
MIN_OUTBOX_BUDGET = 64 * 1024


class ConfigError(Exception):
    """A configuration problem, as the one line an operator should read."""


@dataclass(frozen=True)
class BrokerConfig:
    url: str
    host: str
    port: int
    tls: bool
    username: str
    password: str = field(repr=False)
    ca_file: Path | None = None
    keepalive_s: int = 30
    #: How long the broker keeps our session (subscriptions, queued cmd messages) while we are
    #: offline. A day covers a night's power cut without keeping stale commands forever.
    session_expiry_s: int = 86_400
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 60.0
    #: QoS 1 publishes awaiting PUBACK at once; bounded so a backlog does not flood the broker.
    inflight_max: int = 10


@dataclass(frozen=True)
class Intervals:
    status_interval_s: float = 30.0
    poll_interval_s: float = 2.0
    #: At most one change-triggered status report per this many seconds (periodic ones still go).
    debounce_s: float = 5.0


@dataclass(frozen=True)
class DeviceConfig:
    driver: str
    #: Keyword arguments for the driver class, as written in the table (minus `driver`).
    settings: dict[str, Any]


@dataclass(frozen=True)
class UpdateConfig:
    """Self-update (agent.update.worker): where releases come from and what to trust."""

    trusted_root: Path
    url: str
    #: Waits before each retry of a download that failed on the network (not on a refusal).
    retry_delays_s: tuple[float, ...] = (5.0, 30.0, 120.0)


@dataclass(frozen=True)
class AgentConfig:
    source: str
    terminal_id: str
    data_dir: Path
    broker: BrokerConfig
    intervals: Intervals = Intervals()
    printer: DeviceConfig | None = None
    reader: DeviceConfig | None = None
    outbox_budget_bytes: int = 20_000_000
    #: The fleet's config-signing public key; stored now, checked by the desired-state apply.
    config_public_key: Path | None = None
    log_level: str = "info"
    #: The fleet server's base URL (http[s]://host[:port]), for templates fetched by `url`.
    server_url: str | None = None
    #: How long a clean shutdown may spend flushing the outbox before it says goodbye.
    shutdown_flush_s: float = 5.0
    update: UpdateConfig | None = None


def load(path: str | Path) -> AgentConfig:
    """Read and validate a config file; raises ConfigError naming the field."""
    source = str(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"{source}: cannot read: {e.strerror or e}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{source}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    return parse(doc, source=source, base_dir=Path(path).parent)


def parse(
    doc: dict[str, Any], *, source: str = "agent.toml", base_dir: Path = Path()
) -> AgentConfig:
    """Validate an already-parsed document (relative paths resolve against `base_dir`)."""
    t = _Table(doc, source, "", base_dir)
    terminal_id = t.string("terminal_id")
    if not TERMINAL_ID.fullmatch(terminal_id):
        t.fail("terminal_id", f"{terminal_id!r} does not match {TERMINAL_ID.pattern}")
    server_url = _server(t.table("server", optional=True))
    cfg = AgentConfig(
        source=source,
        terminal_id=terminal_id,
        data_dir=t.path("data_dir"),
        broker=_broker(t.table("broker"), terminal_id),
        intervals=_intervals(t.table("intervals", optional=True)),
        printer=_device(t.table("printer", optional=True), PRINTER_DRIVERS),
        reader=_device(t.table("reader", optional=True), READER_DRIVERS),
        outbox_budget_bytes=_outbox(t.table("outbox", optional=True)),
        config_public_key=t.optional_path("config_public_key", must_exist=True),
        log_level=t.choice("log_level", LOG_LEVELS, default="info"),
        server_url=server_url,
        shutdown_flush_s=t.number("shutdown_flush_s", default=5.0, minimum=0.0),
        update=_update(t.table("update", optional=True), server_url),
    )
    t.no_unknown_keys()
    return cfg


def _broker(t: _Table, terminal_id: str) -> BrokerConfig:
    url = t.string("url")
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        t.fail("url", f"{url!r}: scheme must be mqtt:// or mqtts://")
    if parts.username or parts.password:
        t.fail("url", "put credentials in broker.username and broker.password_file, not the URL")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        t.fail("url", f"{url!r}: expected mqtt[s]://host[:port] with nothing after it")
    try:
        port = parts.port
    except ValueError:
        t.fail("url", f"{url!r}: bad port")
    if not parts.hostname:
        t.fail("url", f"{url!r}: no host")
    tls = parts.scheme == "mqtts"

    has_pw, has_file = "password" in t.doc, "password_file" in t.doc
    if has_pw == has_file:
        t.fail("password", "give exactly one of broker.password and broker.password_file")
    if has_pw:
        password = t.string("password")
    else:
        pw_path = t.path("password_file", must_exist=True)
        try:
            # A trailing newline from `echo secret > file` is not part of the password.
            password = pw_path.read_text("utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError) as e:
            t.fail("password_file", f"cannot read {pw_path}: {e}")
        if not password:
            t.fail("password_file", f"{pw_path} is empty")

    ca_file = t.optional_path("ca_file", must_exist=True)
    if ca_file and not tls:
        t.fail("ca_file", "only used with an mqtts:// URL")
    reconnect_min = t.number("reconnect_min_s", default=1.0, minimum=0.01)
    reconnect_max = t.number("reconnect_max_s", default=60.0, minimum=0.01)
    if reconnect_max < reconnect_min:
        t.fail("reconnect_max_s", "must not be smaller than reconnect_min_s")
    cfg = BrokerConfig(
        url=url,
        host=str(parts.hostname),
        port=port or (8883 if tls else 1883),
        tls=tls,
        username=t.string("username", default=terminal_id),
        password=password,
        ca_file=ca_file,
        keepalive_s=t.integer("keepalive_s", default=30, minimum=5, maximum=65535),
        session_expiry_s=t.integer("session_expiry_s", default=86_400, minimum=0),
        reconnect_min_s=reconnect_min,
        reconnect_max_s=reconnect_max,
        inflight_max=t.integer("inflight_max", default=10, minimum=1, maximum=1000),
    )
    t.no_unknown_keys()
    return cfg


def _intervals(t: _Table) -> Intervals:
    cfg = Intervals(
        status_interval_s=t.number("status_interval_s", default=30.0, minimum=0.05),
        poll_interval_s=t.number("poll_interval_s", default=2.0, minimum=0.05),
        debounce_s=t.number("debounce_s", default=5.0, minimum=0.0),
    )
    t.no_unknown_keys()
    return cfg


def _server(t: _Table) -> str | None:
    if not t.doc and t.missing:
        return None
    url = t.string("url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        t.fail("url", f"{url!r}: expected http[s]://host[:port]")
    if parts.username or parts.password or parts.query or parts.fragment:
        t.fail("url", f"{url!r}: expected http[s]://host[:port][/path] with nothing else")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        t.fail("url", f"{url!r}: bad port")
    t.no_unknown_keys()
    return url.rstrip("/")


def _update(t: _Table, server_url: str | None) -> UpdateConfig | None:
    if not t.doc and t.missing:
        return None
    root = t.path("trusted_root", must_exist=True)
    if "url" in t.doc:
        url = t.string("url")
        if urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname:
            t.fail("url", f"{url!r}: expected http[s]://host[:port]/path")
    elif server_url is not None:
        url = server_url + "/api/v1/updates/"
    else:
        t.fail("url", "missing, and there is no [server] url to derive it from")
    delays = t._get("retry_delays_s", [5.0, 30.0, 120.0], "a list of seconds")
    if not isinstance(delays, list) or not all(
        isinstance(d, int | float) and not isinstance(d, bool) and 0 <= d <= 3600 for d in delays
    ):
        t.fail("retry_delays_s", "expected a list of seconds, each 0 to 3600")
    t.no_unknown_keys()
    return UpdateConfig(trusted_root=root, url=url, retry_delays_s=tuple(float(d) for d in delays))


def _outbox(t: _Table) -> int:
    budget = t.integer("budget_bytes", default=20_000_000, minimum=MIN_OUTBOX_BUDGET)
    t.no_unknown_keys()
    return budget


def _device(t: _Table, drivers: tuple[str, ...]) -> DeviceConfig | None:
    if not t.doc and t.missing:
        return None
    driver = t.string("driver")
    if driver not in drivers:
        t.fail("driver", f"unknown driver {driver!r} (expected {', '.join(drivers)})")
    # The driver's own keyword arguments are checked against its signature by the factory,
    # which imports the driver module (check-config does that too).
    settings = {k: v for k, v in t.doc.items() if k != "driver"}
    return DeviceConfig(driver=driver, settings=settings)


class _Table:
    """One TOML table, with typed getters that name `prefix.key` in every error."""

    def __init__(
        self, doc: dict[str, Any], source: str, prefix: str, base_dir: Path, missing: bool = False
    ) -> None:
        self.doc = doc
        self.source = source
        self.prefix = prefix
        self.base_dir = base_dir
        self.missing = missing
        self.seen: set[str] = set()

    def name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def fail(self, key: str, message: str) -> NoReturn:
        raise ConfigError(f"{self.source}: {self.name(key)}: {message}")

    def _get(self, key: str, default: Any, kind: str) -> Any:
        self.seen.add(key)
        if key not in self.doc:
            if default is _REQUIRED:
                self.fail(key, f"missing (expected {kind})")
            return default
        return self.doc[key]

    def table(self, key: str, optional: bool = False) -> _Table:
        value = self._get(key, {} if optional else _REQUIRED, "a table")
        if not isinstance(value, dict):
            self.fail(key, f"expected a table, got {_kind(value)}")
        return _Table(value, self.source, f"{self.name(key)}.", self.base_dir, key not in self.doc)

    def string(self, key: str, default: Any = None) -> str:
        value = self._get(key, _REQUIRED if default is None else default, "a string")
        if not isinstance(value, str):
            self.fail(key, f"expected a string, got {_kind(value)}")
        if not value:
            self.fail(key, "must not be empty")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.string(key, default)
        if value not in choices:
            self.fail(key, f"{value!r} is not one of {', '.join(choices)}")
        return value

    def integer(
        self, key: str, default: int, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value = self._get(key, default, "an integer")
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, f"expected an integer, got {_kind(value)}")
        self._range(key, value, minimum, maximum)
        return int(value)

    def number(self, key: str, default: float, minimum: float | None = None) -> float:
        value = self._get(key, default, "a number")
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            self.fail(key, f"expected a number of seconds, got {_kind(value)}")
        self._range(key, value, minimum, None)
        return float(value)

    def _range(self, key: str, value: float, minimum: float | None, maximum: float | None) -> None:
        if minimum is not None and value < minimum:
            self.fail(key, f"{value} is below the minimum {minimum}")
        if maximum is not None and value > maximum:
            self.fail(key, f"{value} is above the maximum {maximum}")

    def path(self, key: str, must_exist: bool = False) -> Path:
        p = self.optional_path(key, must_exist, required=True)
        assert p is not None  # required: a missing key already failed
        return p

    def optional_path(
        self, key: str, must_exist: bool = False, required: bool = False
    ) -> Path | None:
        value = self._get(key, _REQUIRED if required else None, "a path")
        if value is None:
            return None
        if not isinstance(value, str) or not value:
            self.fail(key, f"expected a path, got {_kind(value)}")
        p = Path(value)
        if not p.is_absolute():
            p = self.base_dir / p
        if must_exist and not p.is_file():
            self.fail(key, f"{value}: no such file")
        return p

    def no_unknown_keys(self) -> None:
        unknown = sorted(set(self.doc) - self.seen)
        if unknown:
            self.fail(unknown[0], "unknown setting")


_REQUIRED: Any = object()


def _kind(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return names.get(type(value), type(value).__name__)
