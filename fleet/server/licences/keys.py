"""The issuing key: the key that signs every licence (LIC1), and the keys auditors trust.

A separate key from the fleet's config key (desired/keys.py): auditors carry its public half on
their trust list, kiosks never need it. The private key lives in `settings.issuer_key_file`
(PKCS#8 PEM, mode 0600). In dev mode a missing file is made on first use with
`settings.issuer_key_alg`; outside dev mode a missing key stops the server, since every printed
licence is checked against the public half and a quietly new key would make them all
`unknown_kid`. Earlier keys (`issuer_previous_keys`) stay on the trust list after a rotation.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import rust_core
from agent.durable import write_atomic
from fleet.server.settings import Settings

log = logging.getLogger(__name__)


class IssuerKeyError(ValueError):
    """The issuing key is missing (outside dev mode) or unreadable, or a previous key is."""


@dataclass(frozen=True)
class Issuer:
    """Who signs licences: the key, the authority's code (`iss`) and its printed name."""

    key: rust_core.SigningKey
    name: str
    authority_name: str = ""
    previous: tuple[rust_core.VerifyingKey, ...] = ()

    def public_keys(self) -> list[rust_core.VerifyingKey]:
        """The current key first, then earlier ones, each once."""
        keys = [self.key.verifying_key()]
        seen = {self.key.kid}
        for k in self.previous:
            if k.kid not in seen:
                seen.add(k.kid)
                keys.append(k)
        return keys

    def trust_list_json(self) -> str:
        """The trust list exactly as `fleet keys trust-list` writes it for these keys."""
        text = rust_core.trust_list_json(self.public_keys(), self.name)
        return text if text.endswith("\n") else text + "\n"


def issuer_key_path(settings: Settings) -> Path:
    path = settings.issuer_key_file
    return path if path is not None else settings.data_dir / "issuer-key.pem"


def load_issuer(settings: Settings) -> Issuer:
    """The issuer from the settings; the key is made and written first if missing in dev mode."""
    path = issuer_key_path(settings)
    if not path.is_file():
        if not settings.dev_mode:
            raise IssuerKeyError(
                f"no issuing key at {path}: make one with `fleet keys generate --alg "
                f"{settings.issuer_key_alg} --out {path}` (and back it up: auditors trust its "
                "public half), or set FLEET_DEV_MODE=1 on a development machine"
            )
        key = rust_core.SigningKey.generate(settings.issuer_key_alg)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, key.to_pem().encode(), mode=0o600)
        log.warning("dev mode: made a new %s issuing key at %s", key.alg, path)
    else:
        try:
            key = rust_core.SigningKey.from_pem(path.read_text())
        except (OSError, rust_core.KeyFormatError) as e:
            raise IssuerKeyError(f"issuing key {path}: {e}") from None
    previous = []
    for p in settings.issuer_previous_keys:
        try:
            pem = p.read_text()
            if "PRIVATE KEY-----" in pem:
                previous.append(rust_core.SigningKey.from_pem(pem).verifying_key())
            else:
                previous.append(rust_core.VerifyingKey.from_pem(pem))
        except (OSError, rust_core.KeyFormatError) as e:
            raise IssuerKeyError(f"previous issuing key {p}: {e}") from None
    return Issuer(key, settings.issuer, settings.issuer_authority_name, tuple(previous))
