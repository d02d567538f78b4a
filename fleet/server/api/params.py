"""What a path or query value may be, said once for every route and dashboard page.

A value the database cannot take (an id its column's validator refuses, an integer past the
column's width, a filter longer than the column) used to reach the query and come back as a
500. Declared here, it is refused as a 422 naming the field before any route runs, and the
OpenAPI states the same bounds, so a client can know them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Final, Literal

from fastapi import Path, Query
from pydantic import (
    AfterValidator,
    BeforeValidator,
    Strict,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
)
from pydantic_core import PydanticCustomError

from agent.desired.document import MODEL_ID, SHA256_HEX, TEMPLATE_ID
from agent.update.tuf_client import VERSION_RE
from fleet.server.alerts.rules import RULES, Severity
from fleet.server.db.models import TERMINAL_ID_RE, RolloutState
from fleet.server.terminal_state import TerminalState

#: An int4 column's largest value (PostgreSQL; SQLite takes 64 bits).
MAX_INT32: Final = 2**31 - 1
#: The bound of a value for an int8 column: the largest integer a JSON number holds exactly in
#: every client (2**53 - 1). 2**63 - 1 itself is no bound a client can check: as a double it
#: equals 2**63, so 2**63 + 1000 passes a schema's `maximum` and the server's check refuses it.
MAX_SAFE_INT: Final = 2**53 - 1

#: A site id: what `fleet terminals add --site` stores (at most 64 characters, no controls).
SITE_ID_RE: Final = r"^[^\x00-\x1f\x7f]{1,64}$"
#: A licence serial: the claims' cti, 16 bytes as hex.
SERIAL_RE: Final = r"^[0-9a-fA-F]{32}$"
#: An agent release name that `fleet updates publish` can make a bundle of (its TUF target).
RELEASE_VERSION_MAX: Final = 64

if TYPE_CHECKING:
    RuleName = str
else:
    # A Literal built from the rule book: one source, and the OpenAPI lists them as an enum.
    RuleName = Literal[tuple(RULES)]

# --- values, usable in bodies too --------------------------------------------------------------


def worded(message: str) -> WrapValidator:
    """Say `message` when the constraints beside it refuse a value, instead of pydantic's
    "String should match pattern '^[0-9]…$'": staff read these on the dashboard and the command
    line. The constraints themselves stay in the OpenAPI."""

    def wrap(value: object, handler: ValidatorFunctionWrapHandler) -> object:
        try:
            return handler(value)
        except ValidationError:
            raise PydanticCustomError("value_error", message) from None

    return WrapValidator(wrap)


TerminalIdValue = Annotated[str, StringConstraints(pattern=TERMINAL_ID_RE)]
SiteIdValue = Annotated[str, StringConstraints(pattern=SITE_ID_RE)]
ModelIdValue = Annotated[str, StringConstraints(pattern=MODEL_ID.pattern)]
ReleaseVersion = Annotated[
    str,
    StringConstraints(pattern=VERSION_RE.pattern, max_length=RELEASE_VERSION_MAX),
    worded("not a release version: digits as MAJOR.MINOR.PATCH, e.g. 1.2.0"),
]


def _json_number(value: object) -> object:
    # pydantic would also read true as 1 and "3" as 3: in JSON neither is a number.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    return value


#: Body numbers and booleans of JSON's own types, as the schema states them (an integral 3.0
#: is an integer, as in JSON Schema; true is no number, 1 is no boolean). In an optional field,
#: bounds go inside, before it: `Annotated[int, Field(ge=0), JSON_NUMBER] | None` (with them
#: outside, pydantic writes `ge`, which JSON Schema does not know, instead of `minimum`).
JSON_NUMBER: Final = BeforeValidator(_json_number)
JsonInt = Annotated[int, JSON_NUMBER]
JsonNumber = Annotated[float, JSON_NUMBER]
JsonBool = Annotated[bool, Strict()]


def is_terminal_id(value: str) -> bool:
    """For the dashboard pages, which answer an impossible id with their 404 page."""
    return re.fullmatch(TERMINAL_ID_RE, value) is not None


def as_rollout_id(value: str) -> int | None:
    """The page's rollout id, or None when no rollout could have it."""
    if not value.isascii() or not value.isdigit():
        return None
    number = int(value)
    return number if 1 <= number <= MAX_INT32 else None


#: Times the database and date arithmetic can hold; a query time outside them is clamped.
EARLIEST: Final = datetime(1970, 1, 1, tzinfo=UTC)
LATEST: Final = datetime(9999, 1, 1, tzinfo=UTC)


_DATE_TIME: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}")


def _date_time_text(value: object) -> object:
    # pydantic would read "0.5" as seconds since the epoch: the schema promises a date-time.
    if isinstance(value, str) and not _DATE_TIME.match(value):
        raise ValueError("not a date-time such as 2026-11-25T06:00:00Z")
    return value


def _utc_clamped(value: datetime) -> datetime:
    # No offset means UTC, as every time in the API is. Clamping rather than refusing keeps the
    # parameter what its schema says (any date-time): nothing was recorded before 1970 anyway.
    aware = value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    try:
        utc = aware.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00+05:00 has no UTC time in the calendar
        return EARLIEST if aware.year < 2000 else LATEST
    return min(max(utc, EARLIEST), LATEST)


Instant = Annotated[datetime, BeforeValidator(_date_time_text), AfterValidator(_utc_clamped)]

# --- path parameters ---------------------------------------------------------------------------

TerminalId = Annotated[
    str, Path(pattern=TERMINAL_ID_RE, description="terminal id (letters, digits, _ and -)")
]
SiteId = Annotated[str, Path(pattern=SITE_ID_RE, description="site id")]
ModelId = Annotated[str, Path(pattern=MODEL_ID.pattern, description="hardware model")]
TemplateId = Annotated[str, Path(pattern=TEMPLATE_ID.pattern, description="template id")]
Sha256 = Annotated[str, Path(pattern=SHA256_HEX.pattern, description="SHA-256, lower-case hex")]
Serial = Annotated[str, Path(pattern=SERIAL_RE, description="licence serial: 32 hex digits")]
AlertId = Annotated[int, Path(ge=1, le=MAX_SAFE_INT)]
RolloutId = Annotated[int, Path(ge=1, le=MAX_INT32)]
TemplateVersionNo = Annotated[int, Path(ge=1, le=MAX_INT32)]

# --- query parameters --------------------------------------------------------------------------

Limit = Annotated[int, Query(ge=1, le=500, description="page size")]
Offset = Annotated[int, Query(ge=0, le=MAX_SAFE_INT, description="items to skip")]
TerminalFilter = Annotated[str | None, Query(pattern=TERMINAL_ID_RE, description="terminal id")]
SiteFilter = Annotated[str | None, Query(pattern=SITE_ID_RE, description="site id")]
RuleFilter = Annotated[RuleName | None, Query(description="alert rule")]
SeverityFilter = Annotated[Severity | None, Query()]
RolloutStateFilter = Annotated[RolloutState | None, Query()]
#: The fleet list's state filter: `online`, or a derived state (fleet.server.terminal_state).
TerminalStateFilter = Literal["online", TerminalState]
