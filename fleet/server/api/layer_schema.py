"""The JSON Schema of a configuration layer, derived from the agent's CONFIG_SCHEMA.

The server checks a layer with `check_layer` (the agent's own rules, which also name the
field); this states the same rules in the OpenAPI so a client sees them. Only what JSON Schema
cannot say is left to the check: service-hours spans in order and not overlapping.
"""

from __future__ import annotations

from typing import Any, Final

from agent.desired.document import CONFIG_SCHEMA, DAYS, HHMM

#: agent.desired.document's service_hours check, as a schema.
_TZ: Final = r"^[A-Za-z_]+(/[A-Za-z0-9_+-]+)*$"
_SPAN: Final = {
    "type": "array",
    "minItems": 2,
    "maxItems": 2,
    "items": {"type": "string", "pattern": HHMM.pattern},
}
_SERVICE_HOURS: Final = {
    "type": "object",
    "required": ["tz", "days"],
    "additionalProperties": False,
    "properties": {
        "tz": {"type": "string", "pattern": _TZ},
        "days": {
            "type": "object",
            "additionalProperties": False,
            "properties": {day: {"type": "array", "maxItems": 4, "items": _SPAN} for day in DAYS},
        },
    },
    "description": 'e.g. {"tz": "Asia/Shanghai", "days": {"mon": [["08:30", "17:30"]]}}; '
    "spans in order, not overlapping",
}


def _rule(rule: Any) -> dict[str, Any]:
    if rule is None:
        return _SERVICE_HOURS
    if isinstance(rule, dict):
        return _section(rule)
    kind, low, high = rule
    if kind is str:
        return {"type": "string", "minLength": int(low), "maxLength": int(high)}
    return {"type": "integer" if kind is int else "number", "minimum": low, "maximum": high}


def _section(rules: dict[str, Any]) -> dict[str, Any]:
    # `null` deletes a setting or a section from the layer (fleet.server.desired.layers).
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {key: {"anyOf": [_rule(r), {"type": "null"}]} for key, r in rules.items()},
    }


LAYER_SCHEMA: Final = {
    **_section(CONFIG_SCHEMA),
    "description": "a partial configuration; `null` deletes a setting from this layer",
}
