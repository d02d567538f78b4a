"""Loading the server's settings for a command, with errors as one line (CliError)."""

from __future__ import annotations

from typing import Any

from fleet.cli_common import CliError
from fleet.server.settings import Settings


def settings_from(config: str | None, **overrides: Any) -> Settings:
    from pydantic import ValidationError

    from fleet.server.settings import load_settings

    try:
        return load_settings(config, **overrides)
    except (ValidationError, FileNotFoundError, ValueError) as e:
        raise settings_error(e) from None


def settings_error(e: Exception) -> CliError:
    """One line: pydantic's first error in words, without its type tags and links."""
    from pydantic import ValidationError

    if isinstance(e, ValidationError) and e.errors():
        first = e.errors(include_url=False)[0]
        where = ".".join(str(x) for x in first.get("loc", ()))
        why = str(first.get("msg", "")).removeprefix("Value error, ")
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        return CliError(f"server settings: {where + ': ' if where else ''}{why}{more}")
    return CliError(f"server settings: {e}")
