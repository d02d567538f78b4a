"""The layers of a terminal's desired configuration, and their merge: pure functions.

    built-in DEFAULTS  <-  defaults  <-  model file (firmware_configs/)  <-  model  <-  site
    <-  terminal

(`defaults`, `model`, `site` and `terminal` are the layers an admin edits over the API; the
built-in values and the model file are what `defaults` and `model` lie on.) `explain` names the
layer each value of a terminal's configuration comes from, so a console can say which layer
decides and a fleet-wide change can say which terminals override it (issue 20).

Each layer is a partial configuration in the shape of `agent.desired.document.CONFIG_SCHEMA`.
`merge` is JSON Merge Patch (RFC 7386) generalised to many layers: later layers win, sections
(dicts) merge key by key, anything else (numbers, strings, lists) is replaced whole, and a
`None` deletes the key. `service_hours` counts as one value, not a section: the document
contract checks it whole (tz and days together), and a site that opens on Saturday states its
whole week, so days cannot leak in from a layer below.

`None` is how an operator unsets something: applied to the stored site layer,
`merge(site, {"paper": {"low_pct": None}})` drops the site's override and the model's value shows
through again. A `None` left in a stored layer deletes the value from the computed config (the
agent then keeps its own built-in default).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any, Final, Protocol

from agent.desired.document import CONFIG_SCHEMA, DAYS, DocumentError, check_config


class HardwareModel(Protocol):
    """What the layers need of a hardware model (fleet.firmware.HardwareModel): its layer."""

    @property
    def desired(self) -> Mapping[str, Any]: ...


#: Values replaced whole even though they are objects (see the module docstring).
ATOMIC: Final = frozenset({"service_hours"})

#: The fleet-wide layer: a complete configuration. The same values as the agent's built-in
#: defaults (agent/config.py `Intervals`, the drivers' timeouts) and the server's settings
#: (status_interval_s, paper_low_pct, service hours and zone), so that a terminal with no
#: other layer behaves as it does without a document.
DEFAULTS: Final[dict[str, Any]] = {
    "status_interval_s": 30,
    "poll_interval_s": 2.0,
    "debounce_s": 5.0,
    "paper": {"low_pct": 20, "capacity": 500},
    "printer": {"timeout_s": 5.0, "media": "iso_a4_210x297mm"},
    "reader": {"timeout_s": 3.0},
    "kiosk": {"locale": "zh-CN", "idle_timeout_s": 120, "notice": ""},
    "service_hours": {
        "tz": "Asia/Shanghai",
        "days": {day: [["08:30", "17:30"]] for day in DAYS[:5]},
    },
}


def merge(*layers: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge, later layers winning; `None` deletes. Inputs are never modified."""
    out: dict[str, Any] = {}
    for layer in layers:
        _merge_into(out, layer, top=True)
    return out


def _merge_into(out: dict[str, Any], layer: Mapping[str, Any], *, top: bool) -> None:
    for key, value in layer.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and not (top and key in ATOMIC):
            below = out.get(key)
            if not isinstance(below, dict):
                below = out[key] = {}
            _merge_into(below, value, top=False)
        else:
            out[key] = copy.deepcopy(value)


def check_layer(layer: Any, name: str) -> None:
    """Check one layer alone; the error's path starts with the layer's name ("site.paper...").

    A `None` (a deletion) is accepted for any known setting or section."""
    if not isinstance(layer, Mapping):
        raise DocumentError(name, "must be an object")
    check_config(_without_deletions(layer, name, CONFIG_SCHEMA), path=name)


def _without_deletions(layer: Mapping[str, Any], path: str, schema: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in layer.items():
        if value is None:
            if not isinstance(schema, dict) or key not in schema:
                raise DocumentError(f"{path}.{key}", "unknown setting")
            continue
        sub = schema.get(key) if isinstance(schema, dict) else None
        if isinstance(value, Mapping) and isinstance(sub, dict):
            out[key] = _without_deletions(value, f"{path}.{key}", sub)
        else:
            out[key] = value
    return out


def layers_of(
    model: HardwareModel | None,
    site_layer: Mapping[str, Any],
    terminal_layer: Mapping[str, Any],
    *,
    fleet_layer: Mapping[str, Any] | None = None,
    model_layer: Mapping[str, Any] | None = None,
) -> list[tuple[str, Mapping[str, Any]]]:
    """The named layers, lowest first (`model` None: a terminal of an unknown model)."""
    return [
        ("built-in", DEFAULTS),
        ("defaults", fleet_layer or {}),
        ("model file", model.desired if model is not None else {}),
        ("model", model_layer or {}),
        ("site", site_layer),
        ("terminal", terminal_layer),
    ]


def compute(
    model: HardwareModel | None,
    site_layer: Mapping[str, Any],
    terminal_layer: Mapping[str, Any],
) -> dict[str, Any]:
    """A terminal's configuration. Raises DocumentError naming the layer that is invalid
    ("site.paper.low_pct: ...") or, for a combination that is not, the result ("config...")."""
    named = layers_of(model, site_layer, terminal_layer)
    for name, layer in named:
        check_layer(layer, name.split()[0])  # "model file" errors read "model.…"
    config = merge(*(layer for _, layer in named))
    check_config(config)
    return config


def explain(named: list[tuple[str, Mapping[str, Any]]]) -> dict[str, str]:
    """Which of the `named` layers (lowest first, as `layers_of` gives them) each value of
    their merge comes from: {"paper.low_pct": "model file", ...}.

    Keys are dotted paths of the leaves (`service_hours` is one leaf); layers are not checked."""
    source: dict[str, str] = {}
    for name, layer in named:
        _mark(source, layer, name, "", top=True)
    return dict(sorted(source.items()))


def leaf_paths(layer: Mapping[str, Any], prefix: str = "") -> list[str]:
    """The dotted paths a layer sets or deletes (`service_hours` is one leaf)."""
    out: list[str] = []
    for key, value in layer.items():
        path = prefix + key
        if isinstance(value, Mapping) and not (not prefix and key in ATOMIC):
            out += leaf_paths(value, path + ".")
        else:
            out.append(path)
    return out


def _mark(
    source: dict[str, str], layer: Mapping[str, Any], name: str, prefix: str, *, top: bool
) -> None:
    for key, value in layer.items():
        path = prefix + key
        if value is None:  # deleted, with everything under it
            _unmark(source, path, below=True, itself=True)
        elif isinstance(value, Mapping) and not (top and key in ATOMIC):
            _unmark(source, path, below=False, itself=True)  # a value replaced by a section
            _mark(source, value, name, path + ".", top=False)
        else:
            _unmark(source, path, below=True, itself=False)  # a section replaced by a value
            source[path] = name


def _unmark(source: dict[str, str], path: str, *, below: bool, itself: bool) -> None:
    for p in list(source):
        if (itself and p == path) or (below and p.startswith(path + ".")):
            del source[p]
