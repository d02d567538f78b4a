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
        raise CliError(f"server settings: {e}") from None
