"""Provision a terminal: its MQTT credentials and the agent.toml to install on the kiosk.

`provision_terminal` checks the terminal id against the MQTT contract, makes a strong random
password, registers the terminal (a hook: the database side is wired by the caller), gives the
broker the new user (the embedded broker, or nothing when an external broker's users are managed
elsewhere) and renders the agent's config in the format `agent/config.py` reads.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol
from urllib.parse import urlsplit

from fleet.firmware import FirmwareConfigError, HardwareModel, firmware_dir, load_models

#: DESIGN.md, MQTT contract (v1); the same pattern as the agent's `agent.report.TERMINAL_ID`.
#: Always used with fullmatch: `$` alone also matches before a trailing newline.
TERMINAL_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: Where the agent keeps its outbox on a kiosk (the Debian package creates it).
AGENT_DATA_DIR = "/var/lib/fleet-agent"
#: Where the fleet's config-signing public key is installed on a kiosk, by convention.
CONFIG_KEY_PLACEHOLDER = "/etc/fleet-agent/fleet-config.pub"
#: Where the TUF root of the fleet's update repository is installed on the kiosk.
UPDATE_ROOT_PLACEHOLDER = "/etc/fleet-agent/update-root.json"
#: 32 random bytes: an MQTT password nobody types, so make it unguessable.
PASSWORD_BYTES = 32

# A TOML value: what the rendered config holds.
TomlValue = str | int | float | bool


class ProvisioningError(ValueError):
    """A terminal cannot be provisioned as asked; the message says why."""


class UserRegistry(Protocol):
    """Where MQTT users are created: `EmbeddedBroker` or `BrokerFiles`."""

    def add_user(self, username: str, password: str) -> None: ...


@dataclass(frozen=True)
class Registration:
    """What the database hook receives: record the terminal, or raise to refuse it."""

    terminal_id: str
    site: str
    model: str


#: The database hook. Called before the broker user is made, so a refused terminal (an unknown
#: site, a duplicate id) never gets credentials.
RegisterHook = Callable[[Registration], None]


@dataclass(frozen=True)
class Drivers:
    """The agent's [printer] and [reader] tables for one hardware model."""

    printer: dict[str, TomlValue]
    reader: dict[str, TomlValue]
    #: Keys whose value is a guess that the installer checks on site.
    adjust_on_site: tuple[str, ...] = field(default=())


SIMULATOR = Drivers(printer={"driver": "sim", "capacity": 500}, reader={"driver": "sim"})

#: Printer addresses that differ per kiosk: a placeholder the installer replaces on site.
_PRINTER_ADDRESS: dict[str, tuple[str, str]] = {
    # IPP Everywhere through the kiosk's own CUPS queue.
    "ipp": ("uri", "ipp://localhost:631/printers/kiosk"),
    # A receipt printer on the kiosk's LAN, raw TCP 9100.
    "escpos": ("address", "tcp://192.168.1.50:9100"),
}


def drivers_of(model: HardwareModel) -> Drivers:
    """The agent's driver tables for a hardware model of firmware_configs/."""
    key, address = _PRINTER_ADDRESS[model.printer_driver]
    printer: dict[str, TomlValue] = {
        "driver": model.printer_driver,
        key: address,
        "timeout_s": model.printer_timeout_s,
        "capacity": model.paper_capacity,
    }
    # Only PC/SC readers have an agent driver; a HID QR scanner types into the kiosk UI.
    reader: dict[str, TomlValue] = (
        {"driver": "pcsc", "timeout_s": model.reader_timeout_s or 3.0}
        if model.reader_type == "pcsc"
        else {}
    )
    return Drivers(printer, reader, adjust_on_site=(key,) if key == "address" else ())


def known_models() -> dict[str, HardwareModel]:
    """The hardware models (firmware_configs/, or FLEET_FIRMWARE_DIR), by id; {} without them."""
    try:
        return load_models(firmware_dir())
    except FirmwareConfigError:
        return {}


def drivers_for(model: str) -> Drivers:
    """The drivers of a hardware model (case-insensitive); the simulator for `sim` or an
    unknown one, so the config is valid and the terminal reports while someone fills them in."""
    found = known_models().get(model.strip().lower())
    return drivers_of(found) if found is not None else SIMULATOR


class Provisioned(NamedTuple):
    agent_toml: str
    password: str


def provision_terminal(
    terminal_id: str,
    site: str,
    model: str,
    broker_url: str,
    broker: UserRegistry | None,
    config_key_path: str | None = CONFIG_KEY_PLACEHOLDER,
    *,
    register: RegisterHook | None = None,
    status_interval_s: float = 30.0,
    password: str | None = None,
    server_url: str | None = None,
    update_root_path: str | None = None,
) -> Provisioned:
    """Register a terminal and its MQTT user; return the agent config text and the password.

    `broker` None: the broker's users are managed outside (an external broker); the caller
    hands the returned password to whoever creates them. `config_key_path` is where the fleet's
    config-signing public key will be on the kiosk; None leaves a commented placeholder (the
    agent then runs without applying desired-state documents). `server_url` is the fleet
    server's HTTP address as the kiosk reaches it (templates, updates); `update_root_path` where
    the update repository's trusted root will be on the kiosk (needs `server_url`; None: the
    agent never updates itself).
    """
    check_terminal_id(terminal_id)
    site = site.strip()
    if not site:
        raise ProvisioningError("a terminal needs a site")
    if not model.strip():
        raise ProvisioningError("a terminal needs a hardware model")
    check_broker_url(broker_url)
    if status_interval_s <= 0:
        raise ProvisioningError("status_interval_s must be positive")
    if server_url is not None:
        check_server_url(server_url)
    if update_root_path is not None and server_url is None:
        raise ProvisioningError("self-update needs the server URL the kiosk downloads from")
    password = password or secrets.token_urlsafe(PASSWORD_BYTES)
    text = render_agent_config(
        terminal_id=terminal_id,
        site=site,
        model=model,
        broker_url=broker_url,
        password=password,
        config_key_path=config_key_path,
        status_interval_s=status_interval_s,
        server_url=server_url,
        update_root_path=update_root_path,
    )
    # HOOK: database registration (the Terminal row) is the caller's, passed in here.
    if register is not None:
        register(Registration(terminal_id=terminal_id, site=site, model=model))
    if broker is not None:
        # The MQTT username is the terminal id: the ACL's %u patterns rely on it.
        broker.add_user(terminal_id, password)
    return Provisioned(text, password)


def check_terminal_id(terminal_id: str) -> None:
    if not TERMINAL_ID.fullmatch(terminal_id):
        raise ProvisioningError(
            f"terminal id {terminal_id!r} does not match {TERMINAL_ID.pattern} "
            "(letters, digits, '_' and '-', starting with a letter or digit, at most 64)"
        )


def check_broker_url(url: str) -> None:
    """The URL rules of the agent's config loader, so a bad URL fails here, not on the kiosk."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts"):
        raise ProvisioningError(f"broker URL {url!r}: scheme must be mqtt:// or mqtts://")
    if parts.username or parts.password:
        raise ProvisioningError(f"broker URL {url!r}: must not carry credentials")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProvisioningError(f"broker URL {url!r}: expected mqtt[s]://host[:port]")
    try:
        parts.port  # noqa: B018 - parsing it is the check
    except ValueError:
        raise ProvisioningError(f"broker URL {url!r}: bad port") from None
    if not parts.hostname:
        raise ProvisioningError(f"broker URL {url!r}: no host")


def check_server_url(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ProvisioningError(f"server URL {url!r}: expected http[s]://host[:port]")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ProvisioningError(f"server URL {url!r}: expected http[s]://host[:port][/path]")


def render_agent_config(
    *,
    terminal_id: str,
    site: str,
    model: str,
    broker_url: str,
    password: str,
    config_key_path: str | None,
    status_interval_s: float,
    server_url: str | None = None,
    update_root_path: str | None = None,
) -> str:
    """agent.toml text (see packaging/agent.example.toml for every setting)."""
    drivers = drivers_for(model)
    known = model.strip().lower() in known_models()
    lines = [
        f"# fleet-agent configuration for terminal {_comment(terminal_id)}",
        f"# site: {_comment(site)}; hardware model: {_comment(model)}"
        + ("" if known else " (unknown model: simulated devices until its drivers are set)"),
        "# Generated by `fleet terminals add`. It holds the terminal's MQTT password: install",
        "# it readable by the agent only (mode 0600). Check it with",
        "#   fleet-agent check-config --config agent.toml",
        "",
        f"terminal_id = {toml_string(terminal_id)}",
        f"data_dir = {toml_string(AGENT_DATA_DIR)}",
    ]
    if config_key_path:
        lines.append(f"config_public_key = {toml_string(config_key_path)}")
    else:
        lines += [
            "# The fleet's config-signing public key; desired-state documents need it:",
            f"# config_public_key = {toml_string(CONFIG_KEY_PLACEHOLDER)}",
        ]
    lines += [
        "",
        "[broker]",
        f"url = {toml_string(broker_url)}",
        f"username = {toml_string(terminal_id)}",
        f"password = {toml_string(password)}",
        "",
        "[intervals]",
        f"status_interval_s = {_number(status_interval_s)}",
        "poll_interval_s = 2",
        "debounce_s = 5",
        "",
        *_server_tables(server_url, update_root_path),
        *_table("printer", drivers.printer, drivers.adjust_on_site),
    ]
    if drivers.reader:  # no [reader]: the model's reader has no agent driver
        lines += ["", *_table("reader", drivers.reader, drivers.adjust_on_site)]
    return "\n".join(lines) + "\n"


def _server_tables(server_url: str | None, update_root_path: str | None) -> list[str]:
    if server_url is None:
        return []
    lines = ["[server]", f"url = {toml_string(server_url.rstrip('/'))}", ""]
    if update_root_path is not None:
        lines += [
            "# Self-update: releases are checked against this TUF root (`fleet updates root`).",
            "[update]",
            f"trusted_root = {toml_string(update_root_path)}",
            "",
        ]
    return lines


def _table(name: str, values: dict[str, TomlValue], adjust: tuple[str, ...]) -> list[str]:
    lines = [f"[{name}]"]
    for key, value in values.items():
        note = "  # adjust on site" if key in adjust else ""
        lines.append(f"{key} = {toml_value(value)}{note}")
    return lines


def toml_value(value: TomlValue) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)  # 5.0 stays a float: the driver's argument is one
    return toml_string(value)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def toml_string(value: str) -> str:
    """A TOML basic string: quote, backslash and control characters escaped (TOML 1.0 §2.4)."""
    out = ['"']
    for ch in value:
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


_SHORT_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _comment(text: str) -> str:
    """Text safe inside a TOML comment: one line, no control characters."""
    return "".join(ch if ch.isprintable() else " " for ch in text)
