"""The desired-state document (DESIGN.md "Desired-state document"), v1: its schema, its bytes,
its signature. One module for both sides: the server builds and signs with it, the agent opens
and checks with it, so the two can never disagree on what a valid document is.

Wire (MQTT `fleet/v1/t/{id}/desired`, QoS 1, retained):

    {"v": 1, "cose": "<standard base64 of a tagged COSE_Sign1>"}

The COSE_Sign1 is EdDSA, signed by the fleet's config key (protected {1: alg, 4: kid}), with
external AAD `DOMAIN` so that no other signature of the same key (or a licence seal) can be
replayed as a document. Its payload is the document as canonical JSON (sorted keys, no spaces,
UTF-8), and the document's hash is "sha256:" + hex SHA-256 of exactly those payload bytes.

Document:

    {"v": 1, "terminal": "T-0001", "version": 7, "issued_at": "2026-11-27T09:30:00Z",
     "model": "kx-a4-ipp",
     "config": {...CONFIG_SCHEMA...},
     "templates": [{"id": "gtgsh-setup", "version": 3, "sha256": "<64 hex>", "size": 1234,
                    "content": {...}}                     # inline when small, or instead
                   {..., "url": "/api/v1/templates/blobs/<sha256>"}],   # fetched, hash checked
     "agent": null | {"version": "1.3.0"}}

`reported` (agent -> server) says what became of a document and what is running:

    {"v": 1, "ts": "...", "version": 7, "hash": "sha256:...", "result": "ok" | "refused" | "failed",
     "error": null | "one line", "applied": null | {"version": 7, "hash": "sha256:..."}}

Every check raises `DocumentError(path, problem)`; the message names the field.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import rust_core

SCHEMA_VERSION: Final = 1
DOMAIN: Final = b"fleet/v1/desired"
#: A retained MQTT message over this is refused before any parsing.
MAX_ENVELOPE_BYTES: Final = 256 * 1024
#: Templates whose canonical content is larger travel by `url` instead of inline.
MAX_INLINE_TEMPLATE_BYTES: Final = 16 * 1024
#: A fetched template larger than this is refused (the document also states its size).
MAX_TEMPLATE_BYTES: Final = 1024 * 1024

TEMPLATE_ID: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
MODEL_ID: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
SHA256_HEX: Final = re.compile(r"^[0-9a-f]{64}$")
HHMM: Final = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")
DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
REPORTED_RESULTS: Final = ("ok", "refused", "failed")

# The configuration a document may carry: (type, min, max) for numbers, nested dicts for
# sections. Unknown keys are refused: a typo in an operator's layer must not silently do nothing.
_Num = tuple[type, float, float]
CONFIG_SCHEMA: Final[dict[str, Any]] = {
    "status_interval_s": (int, 5, 3600),
    "poll_interval_s": (float, 0.5, 60),
    "debounce_s": (float, 0, 300),
    "paper": {"low_pct": (int, 1, 99), "capacity": (int, 1, 10_000)},
    "printer": {"timeout_s": (float, 0.5, 60), "media": (str, 1, 64)},
    "reader": {"timeout_s": (float, 0.5, 60)},
    "kiosk": {"locale": (str, 2, 16), "idle_timeout_s": (int, 10, 3600), "notice": (str, 0, 500)},
    # {"tz": "Asia/Shanghai", "days": {"mon": [["08:30", "17:30"]], ...}}: checked by hand below
    "service_hours": None,
}


class DocumentError(ValueError):
    """A document (or envelope, or reported message) that breaks the contract."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


class SignatureRefused(DocumentError):
    """The envelope parsed but its signature is not the fleet's config key's over this payload."""


@dataclass(frozen=True, slots=True)
class Opened:
    """A verified, schema-checked document and the exact bytes it was signed over."""

    document: dict[str, Any]
    payload: bytes
    hash: str

    @property
    def version(self) -> int:
        return int(self.document["version"])


# -- bytes -------------------------------------------------------------------------------------


def canonical(value: Any) -> bytes:
    """The one byte form of a JSON value: sorted keys, no spaces, UTF-8, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def doc_hash(payload: bytes) -> str:
    return "sha256:" + sha256_hex(payload)


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- server side -------------------------------------------------------------------------------


def seal(document: dict[str, Any], key: rust_core.SigningKey) -> tuple[bytes, str]:
    """Check `document`, sign it: (MQTT payload of the envelope, document hash)."""
    check_document(document)
    if key.alg != "EdDSA":
        raise DocumentError("", f"the config key must be EdDSA, not {key.alg}")
    payload = canonical(document)
    cose = key.sign_cose(payload, DOMAIN, True)
    envelope = canonical({"v": SCHEMA_VERSION, "cose": base64.b64encode(cose).decode()})
    if len(envelope) > MAX_ENVELOPE_BYTES:
        raise DocumentError("", f"signed document is {len(envelope)} bytes, over the limit")
    return envelope, doc_hash(payload)


# -- agent side --------------------------------------------------------------------------------


def open_envelope(raw: bytes, key: rust_core.VerifyingKey, terminal: str) -> Opened:
    """Verify and check an MQTT `desired` payload meant for `terminal`.

    Order matters: the signature is checked before anything inside the payload is believed,
    and the schema before anything is applied. Version (no rollback) is the caller's check,
    since only it knows what is applied.
    """
    if len(raw) > MAX_ENVELOPE_BYTES:
        raise DocumentError("", f"envelope is {len(raw)} bytes, over {MAX_ENVELOPE_BYTES}")
    try:
        env = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DocumentError("", f"envelope is not JSON ({e})") from None
    if not isinstance(env, dict) or env.get("v") != SCHEMA_VERSION:
        raise DocumentError("v", f"envelope must be an object with v={SCHEMA_VERSION}")
    cose_b64 = env.get("cose")
    if not isinstance(cose_b64, str):
        raise DocumentError("cose", "missing or not a string")
    try:
        cose = base64.b64decode(cose_b64, validate=True)
    except binascii.Error:
        raise DocumentError("cose", "not standard base64") from None
    verdict, payload, detail = rust_core.open_cose_sign1(cose, key, DOMAIN)
    if payload is None:
        raise SignatureRefused("cose", f"{verdict}: {detail}")
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DocumentError("", f"signed payload is not JSON ({e})") from None
    check_document(document)
    if document["terminal"] != terminal:
        raise DocumentError("terminal", f"document is for {document['terminal']!r}")
    return Opened(document=document, payload=payload, hash=doc_hash(payload))


def version_refusal(applied: Opened | None, new: Opened) -> str | None:
    """Why `new` may not replace `applied` (no rollback, no replay); None when it may, or when it
    is the applied document itself (the retained copy delivered again)."""
    if applied is None or new.version > applied.version:
        return None
    if new.version == applied.version and new.hash == applied.hash:
        return None
    return f"version {new.version} is not newer than applied {applied.version}"


# -- schema ------------------------------------------------------------------------------------


def check_document(doc: Any) -> None:
    if not isinstance(doc, dict):
        raise DocumentError("", "document must be a JSON object")
    _only(
        doc,
        "",
        required=("v", "terminal", "version", "issued_at", "config", "templates"),
        optional=("model", "agent"),
    )
    if doc["v"] != SCHEMA_VERSION:
        raise DocumentError("v", f"unsupported document version {doc['v']!r}")
    if not isinstance(doc["terminal"], str) or not re.fullmatch(
        r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", doc["terminal"]
    ):
        raise DocumentError("terminal", "not a terminal id")
    _int_in(doc["version"], "version", 1, 2**53)
    _timestamp(doc["issued_at"], "issued_at")
    if "model" in doc and (
        not isinstance(doc["model"], str) or not MODEL_ID.fullmatch(doc["model"])
    ):
        raise DocumentError("model", "not a hardware model id")
    check_config(doc["config"])
    check_templates(doc["templates"])
    agent = doc.get("agent")
    if agent is not None:
        if not isinstance(agent, dict):
            raise DocumentError("agent", "must be null or an object")
        _only(agent, "agent", required=("version",), optional=("bundle",))
        if not isinstance(agent["version"], str) or not re.fullmatch(
            r"\d+\.\d+\.\d+([.+-][0-9A-Za-z.+-]{1,32})?", agent["version"]
        ):
            raise DocumentError("agent.version", "not a version string")


def check_config(config: Any, path: str = "config") -> None:
    """Check a (possibly partial) configuration against CONFIG_SCHEMA."""
    _section(config, path, CONFIG_SCHEMA)


def _section(value: Any, path: str, schema: dict[str, Any]) -> None:
    if not isinstance(value, dict):
        raise DocumentError(path, "must be an object")
    for key, item in value.items():
        where = f"{path}.{key}"
        if key not in schema:
            raise DocumentError(where, "unknown setting")
        rule = schema[key]
        if key == "service_hours":
            _service_hours(item, where)
        elif isinstance(rule, dict):
            _section(item, where, rule)
        else:
            _scalar(item, where, rule)


def _scalar(value: Any, path: str, rule: _Num) -> None:
    kind, low, high = rule
    if kind is str:
        if not isinstance(value, str) or not low <= len(value) <= high:
            raise DocumentError(path, f"must be a string of {low:g} to {high:g} characters")
        return
    if isinstance(value, bool) or not isinstance(value, int if kind is int else (int, float)):
        raise DocumentError(path, "must be an integer" if kind is int else "must be a number")
    if not low <= value <= high:
        raise DocumentError(path, f"{value!r} is outside {low:g}..{high:g}")


def _service_hours(value: Any, path: str) -> None:
    if not isinstance(value, dict):
        raise DocumentError(path, "must be an object")
    _only(value, path, required=("tz", "days"), optional=())
    if not isinstance(value["tz"], str) or not re.fullmatch(
        r"[A-Za-z_]+(/[A-Za-z0-9_+-]+)*", value["tz"]
    ):
        raise DocumentError(f"{path}.tz", "not an IANA time zone name")
    days = value["days"]
    if not isinstance(days, dict):
        raise DocumentError(f"{path}.days", "must be an object")
    for day, spans in days.items():
        where = f"{path}.days.{day}"
        if day not in DAYS:
            raise DocumentError(where, f"unknown day (expected one of {', '.join(DAYS)})")
        if not isinstance(spans, list) or len(spans) > 4:
            raise DocumentError(where, "must be a list of at most 4 [open, close] pairs")
        last = ""
        for i, span in enumerate(spans):
            if (
                not isinstance(span, list)
                or len(span) != 2
                or not all(isinstance(t, str) and HHMM.fullmatch(t) for t in span)
            ):
                raise DocumentError(f"{where}[{i}]", 'must be ["HH:MM", "HH:MM"]')
            if not last <= span[0] < span[1]:
                raise DocumentError(f"{where}[{i}]", "spans must be in order and not overlap")
            last = span[1]


def check_templates(templates: Any) -> None:
    if not isinstance(templates, list) or len(templates) > 64:
        raise DocumentError("templates", "must be a list of at most 64 templates")
    seen: set[str] = set()
    for i, t in enumerate(templates):
        where = f"templates[{i}]"
        if not isinstance(t, dict):
            raise DocumentError(where, "must be an object")
        _only(t, where, required=("id", "version", "sha256", "size"), optional=("content", "url"))
        if not isinstance(t["id"], str) or not TEMPLATE_ID.fullmatch(t["id"]):
            raise DocumentError(f"{where}.id", "not a template id")
        if t["id"] in seen:
            raise DocumentError(f"{where}.id", f"template {t['id']!r} appears twice")
        seen.add(t["id"])
        _int_in(t["version"], f"{where}.version", 1, 2**31)
        if not isinstance(t["sha256"], str) or not SHA256_HEX.fullmatch(t["sha256"]):
            raise DocumentError(f"{where}.sha256", "must be 64 lowercase hex digits")
        _int_in(t["size"], f"{where}.size", 2, MAX_TEMPLATE_BYTES)
        if ("content" in t) == ("url" in t):
            raise DocumentError(where, "must carry exactly one of content and url")
        if "content" in t:
            data = canonical(t["content"])
            if len(data) != t["size"] or sha256_hex(data) != t["sha256"]:
                raise DocumentError(f"{where}.content", "does not match its size and sha256")
        elif not isinstance(t["url"], str) or not t["url"].startswith("/api/v1/templates/blobs/"):
            raise DocumentError(f"{where}.url", "must be a path under /api/v1/templates/blobs/")


def check_template_blob(data: bytes, entry: dict[str, Any]) -> dict[str, Any]:
    """A template fetched by `url`: its bytes must match the signed size and hash."""
    if len(data) != entry["size"] or sha256_hex(data) != entry["sha256"]:
        raise DocumentError(f"template {entry['id']}", "fetched content does not match its sha256")
    content = json.loads(data)
    if not isinstance(content, dict):
        raise DocumentError(f"template {entry['id']}", "content must be a JSON object")
    return content


def template_entry(
    template_id: str,
    version: int,
    content: dict[str, Any],
    url_prefix: str = "/api/v1/templates/blobs/",
) -> dict[str, Any]:
    """The document's entry for a template: inline when small, else by content-addressed url."""
    data = canonical(content)
    digest = sha256_hex(data)
    entry: dict[str, Any] = {
        "id": template_id,
        "version": version,
        "sha256": digest,
        "size": len(data),
    }
    if len(data) <= MAX_INLINE_TEMPLATE_BYTES:
        entry["content"] = content
    else:
        entry["url"] = url_prefix + digest
    return entry


def reported(
    result: str,
    version: int | None,
    hash_: str | None,
    applied: Opened | None,
    error: str | None = None,
) -> dict[str, Any]:
    """The `reported` message of the agent (see the module docstring)."""
    if result not in REPORTED_RESULTS:
        raise ValueError(result)
    return {
        "v": SCHEMA_VERSION,
        "ts": utc_now(),
        "version": version,
        "hash": hash_,
        "result": result,
        "error": error,
        "applied": None if applied is None else {"version": applied.version, "hash": applied.hash},
    }


def check_reported(doc: Any) -> None:
    """The server's check of a `reported` message."""
    if not isinstance(doc, dict):
        raise DocumentError("", "must be a JSON object")
    _only(
        doc,
        "",
        required=("v", "ts", "result"),
        optional=("version", "hash", "error", "applied", "seq"),
    )
    if doc["result"] not in REPORTED_RESULTS:
        raise DocumentError("result", f"must be one of {', '.join(REPORTED_RESULTS)}")
    _timestamp(doc["ts"], "ts")
    for key in ("version",):
        if doc.get(key) is not None:
            _int_in(doc[key], key, 1, 2**53)
    for where, h in (
        ("hash", doc.get("hash")),
        ("applied.hash", (doc.get("applied") or {}).get("hash")),
    ):
        if h is not None and (
            not isinstance(h, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", h)
        ):
            raise DocumentError(where, "must be sha256:<64 hex>")
    applied = doc.get("applied")
    if applied is not None:
        if not isinstance(applied, dict):
            raise DocumentError("applied", "must be null or an object")
        _only(applied, "applied", required=("version", "hash"), optional=())
        _int_in(applied["version"], "applied.version", 1, 2**53)
    if doc.get("error") is not None and not isinstance(doc["error"], str):
        raise DocumentError("error", "must be null or a string")


# -- helpers -----------------------------------------------------------------------------------


def _only(
    obj: dict[str, Any], path: str, required: tuple[str, ...], optional: tuple[str, ...]
) -> None:
    prefix = f"{path}." if path else ""
    for key in required:
        if key not in obj:
            raise DocumentError(prefix + key, "missing")
    for key in obj:
        if key not in required and key not in optional:
            raise DocumentError(prefix + str(key), "unknown field")


def _int_in(value: Any, path: str, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise DocumentError(path, f"must be an integer in {low}..{high}")


def _timestamp(value: Any, path: str) -> None:
    if not isinstance(value, str):
        raise DocumentError(path, "must be an RFC 3339 UTC timestamp")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise DocumentError(path, "must be an RFC 3339 UTC timestamp") from None
    if parsed.tzinfo is None:
        raise DocumentError(path, "must carry a time zone")
