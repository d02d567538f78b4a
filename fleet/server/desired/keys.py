"""The fleet's config key: the EdDSA key that signs every desired-state document.

The private key lives in `settings.config_key_file` (PKCS#8 PEM, mode 0600). In dev mode a
missing file is made on first start; outside dev mode a missing key stops the server, as a default
secret does (settings.py): a production fleet must not quietly sign with a key nobody backed up,
since every kiosk is provisioned with its public half and a new key means re-provisioning them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import rust_core
from agent.durable import write_atomic
from fleet.server.settings import Settings

log = logging.getLogger(__name__)

#: The file name the public half gets next to an agent config (`fleet terminals add --out`).
PUBLIC_KEY_NAME = "fleet-config.pub"


class ConfigKeyError(ValueError):
    """The config key is missing (outside dev mode), unreadable or not EdDSA."""


def config_key_path(settings: Settings) -> Path:
    path = settings.config_key_file
    return path if path is not None else settings.data_dir / "config-key.pem"


def load_config_key(settings: Settings) -> rust_core.SigningKey:
    """The config key; made and written first if missing and `settings.dev_mode` is on."""
    path = config_key_path(settings)
    if not path.is_file():
        if not settings.dev_mode:
            raise ConfigKeyError(
                f"no config key at {path}: make one with "
                f"`fleet keys generate --alg EdDSA --out {path}` (and back it up: every kiosk "
                "trusts its public half), or set FLEET_DEV_MODE=1 on a development machine"
            )
        key = rust_core.SigningKey.generate("EdDSA")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, key.to_pem().encode(), mode=0o600)
        log.warning("dev mode: made a new config key at %s", path)
        return key
    try:
        key = rust_core.SigningKey.from_pem(path.read_text())
    except (OSError, rust_core.KeyFormatError) as e:
        raise ConfigKeyError(f"config key {path}: {e}") from None
    if key.alg != "EdDSA":
        raise ConfigKeyError(f"config key {path}: must be EdDSA, not {key.alg}")
    return key
