"""A terminal's handling of its `desired` topic at the protocol level, as the real agent does it.

No files and no drivers: verify (agent.desired.document.open_envelope: the signature is checked
in Rust), check the version against what is applied, keep the applied one, and say what became
of the document in a `reported` message. The fleet simulator holds one per terminal.

Version rules, word for word those of agent/desired/apply.py (no rollback, and a re-delivery is
not an error): the retained document comes again on every reconnect, so the same version with the
same hash is answered "ok" again without applying anything; a lower version, or the same version
with a different hash (two documents claiming one version), is refused. An empty payload (a
cleared retained topic) is refused as "not JSON", as the agent does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import rust_core
from agent.desired import document
from agent.desired.document import DocumentError, Opened, version_refusal

NO_KEY = "no config key"


@dataclass(frozen=True)
class Outcome:
    """The `reported` message, and the document when it is newly applied (else None)."""

    reported: dict[str, Any]
    applied: Opened | None


class DesiredState:
    def __init__(self, terminal_id: str, key: rust_core.VerifyingKey | None) -> None:
        self.terminal_id = terminal_id
        self.key = key
        self.applied: Opened | None = None

    @property
    def hash(self) -> str | None:
        return None if self.applied is None else self.applied.hash

    def receive(self, raw: bytes) -> Outcome:
        if self.key is None:
            return Outcome(self._refused(None, NO_KEY), None)
        try:
            opened = document.open_envelope(raw, self.key, self.terminal_id)
        except DocumentError as e:
            return Outcome(self._refused(None, str(e)), None)
        except Exception as e:  # garbage that trips the COSE library is still just refused
            return Outcome(self._refused(None, f"{type(e).__name__}: {e}"), None)
        refusal = version_refusal(self.applied, opened)
        if refusal is not None:
            return Outcome(self._refused(opened, refusal), None)
        fresh = self.applied is None or opened.hash != self.applied.hash
        self.applied = opened
        reported = document.reported("ok", opened.version, opened.hash, opened)
        return Outcome(reported, opened if fresh else None)

    def _refused(self, doc: Opened | None, error: str) -> dict[str, Any]:
        version = None if doc is None else doc.version
        hash_ = None if doc is None else doc.hash
        return document.reported("refused", version, hash_, self.applied, error)
