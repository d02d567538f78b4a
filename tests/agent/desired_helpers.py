"""Making signed desired-state documents for the agent's desired-state tests."""

from __future__ import annotations

import base64
from typing import Any

import rust_core
from agent.desired import document


def doc(
    version: int,
    *,
    terminal: str = "T-0001",
    config: dict[str, Any] | None = None,
    templates: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "v": 1,
        "terminal": terminal,
        "version": version,
        "issued_at": "2026-11-27T09:30:00Z",
        "model": "kx-a4-ipp",
        "config": {"status_interval_s": 60} if config is None else config,
        "templates": templates or [],
        "agent": None,
    }


def form(version: int, size: int = 0) -> dict[str, Any]:
    """A form template's content; `size` pads it (over 16 KiB it travels by url)."""
    return {
        "title": f"个体工商户设立登记 v{version}",
        "schema": {"type": "object", "properties": {"name": {"type": "string"}}},
        "pad": "x" * size,
    }


def seal(d: dict[str, Any], key: rust_core.SigningKey) -> bytes:
    return document.seal(d, key)[0]


def seal_unchecked(d: dict[str, Any], key: rust_core.SigningKey) -> bytes:
    """Signed by the right key, but without seal's schema check (a server bug, say)."""
    cose = key.sign_cose(document.canonical(d), document.DOMAIN, True)
    return document.canonical({"v": 1, "cose": base64.b64encode(cose).decode()})


def tamper(envelope: bytes, where: str) -> bytes:
    """Flip one bit of the COSE structure: in the signature (end) or the payload (middle)."""
    import json

    cose = bytearray(base64.b64decode(json.loads(envelope)["cose"]))
    i = len(cose) - 5 if where == "signature" else len(cose) // 2
    cose[i] ^= 0x01
    return document.canonical({"v": 1, "cose": base64.b64encode(bytes(cose)).decode()})
