"""Build the configured printer and reader drivers by name.

Driver modules are imported only when chosen, so a kiosk with an IPP printer never needs pyserial
or pyscard installed. A table's keys are the driver class's keyword arguments; they are checked
against its signature before anything is constructed, so a typo ("urx") is a config error naming
the field instead of a TypeError from deep inside the agent.
"""

from __future__ import annotations

import importlib
import inspect
import types
import typing
from typing import Any

from agent.config import ConfigError, DeviceConfig
from agent.drivers.base import Printer, Reader

#: driver name -> (module, class). The names are those `agent.config` accepts.
PRINTERS: dict[str, tuple[str, str]] = {
    "ipp": ("agent.drivers.ipp", "IppPrinter"),
    "escpos": ("agent.drivers.escpos", "EscPosPrinter"),
    "sim": ("agent.drivers.simulated", "SimulatedPrinter"),
}
READERS: dict[str, tuple[str, str]] = {
    "pcsc": ("agent.drivers.pcsc", "PcscReader"),
    "sim": ("agent.drivers.simulated", "SimulatedReader"),
}

#: What a TOML value can be for a driver argument; anything else (a clock, a callback) is
#: wiring for tests and demos, not a setting.
_SCALARS: dict[type, tuple[type, ...]] = {
    str: (str,),
    int: (int,),
    float: (int, float),
    bool: (bool,),
}


def make_printer(cfg: DeviceConfig, *, source: str = "agent.toml") -> Printer:
    cls = driver_class(PRINTERS, cfg, "printer", source)
    return typing.cast(Printer, _construct(cls, cfg, "printer", source))


def make_reader(cfg: DeviceConfig, *, source: str = "agent.toml") -> Reader:
    cls = driver_class(READERS, cfg, "reader", source)
    return typing.cast(Reader, _construct(cls, cfg, "reader", source))


def check(cfg: DeviceConfig, section: str, *, source: str = "agent.toml") -> None:
    """Validate a device table against its driver's signature without constructing it."""
    registry = PRINTERS if section == "printer" else READERS
    _bind(driver_class(registry, cfg, section, source), cfg, section, source)


def driver_class(
    registry: dict[str, tuple[str, str]], cfg: DeviceConfig, section: str, source: str
) -> type:
    if cfg.driver not in registry:
        expected = ", ".join(registry)
        raise ConfigError(
            f"{source}: {section}.driver: unknown driver {cfg.driver!r} (expected {expected})"
        )
    module_name, class_name = registry[cfg.driver]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        # Typically an optional dependency (pyscard, pyserial) missing on this kiosk.
        raise ConfigError(
            f"{source}: {section}.driver: driver {cfg.driver!r} cannot be loaded: {e}"
        ) from None
    cls = getattr(module, class_name, None)
    if not isinstance(cls, type):
        raise ConfigError(f"{source}: {section}.driver: {module_name} has no {class_name}")
    return cls


def _construct(cls: type, cfg: DeviceConfig, section: str, source: str) -> Any:
    _bind(cls, cfg, section, source)
    try:
        return cls(**cfg.settings)
    except (ValueError, TypeError) as e:
        # Drivers refuse impossible values (a negative timeout) with ValueError.
        raise ConfigError(f"{source}: {section}: {e}") from None


def _bind(cls: type, cfg: DeviceConfig, section: str, source: str) -> None:
    sig = inspect.signature(cls)
    params = sig.parameters
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    names = [
        n
        for n, p in params.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    ]
    hints = _hints(cls)
    settable = [n for n in names if n not in hints or _allowed_types(hints[n]) is not None]
    for key, value in cfg.settings.items():
        where = f"{source}: {section}.{key}"
        if key not in params:
            if accepts_any:
                continue
            raise ConfigError(
                f"{where}: unknown setting for driver {cfg.driver!r} "
                f"(expected {', '.join(settable) or 'none'})"
            )
        allowed = _allowed_types(hints[key]) if key in hints else None
        if key in hints and allowed is None:
            raise ConfigError(f"{where}: not a setting of driver {cfg.driver!r}")
        if allowed is not None and not _matches(value, allowed):
            want = " or ".join(sorted({t.__name__ for t in allowed if t is not type(None)}))
            raise ConfigError(f"{where}: expected {want}, got {type(value).__name__}")
    for name in names:
        p = params[name]
        if p.default is inspect.Parameter.empty and name not in cfg.settings:
            raise ConfigError(
                f"{source}: {section}.{name}: missing (required by driver {cfg.driver!r})"
            )


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls.__init__)  # type: ignore[misc]
    except Exception:
        return {}


def _allowed_types(hint: Any) -> tuple[type, ...] | None:
    """The Python types a TOML value may have for this annotation, or None if not a scalar."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if typing.get_origin(hint) is typing.Union:
        args = typing.get_args(hint)
    out: list[type] = []
    for a in args:
        if a is type(None):
            out.append(type(None))
        elif a in _SCALARS:
            out.extend(_SCALARS[a])
        else:
            return None
    return tuple(out)


def _matches(value: Any, allowed: tuple[type, ...]) -> bool:
    # TOML has no null, but bool is an int subclass in Python: keep them apart.
    if isinstance(value, bool):
        return bool in allowed
    return isinstance(value, allowed)
