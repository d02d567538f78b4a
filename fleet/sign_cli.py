"""`fleet sign` (issue licences from a claims file) and `fleet revocations` (revocation list)."""

from __future__ import annotations

import argparse
import json
from typing import Any

import rust_core
from fleet.cli_common import CliError, load_signing_key, parse_serial, read_text, warn, write_atomic
from fleet.licence_claims import ClaimsInputError, claims_from_json

SIGN_DESCRIPTION = """\
Sign licences and print their LIC1 QR texts, one per line.

CLAIMS.json ("-" = stdin) is one claims object, or an array of them (signed as a batch):
  {"iss": "CN-510107",            issuing authority (required)
   "iat": 1767225600,             issued at, seconds since 1970 (default: now)
   "exp": 1798761600,             expiry of this printout (optional)
   "cti": "<32 hex digits>",      licence serial (default: 16 random bytes)
   "lic": {"1": "<USCC>", "2": "<name>", "3": "<kind>", "4": "<representative>",
           "5": "<address>", "6": "<capital>", "7": "YYYY-MM-DD", "8": "<scope>",
           "9": "<terminal id>"}}
lic keys are the field numbers of DESIGN.md, or their names: uscc, name, kind, rep, addr, cap,
est, scope, term. The serial of each licence is reported on stderr."""


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "sign",
        help="issue licences (LIC1 QR texts) from a claims JSON file",
        description=SIGN_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--key", required=True, metavar="KEY.pem", help="private signing key (PEM)")
    p.add_argument("--out", metavar="FILE", help="write the texts here (replacing it), not stdout")
    p.add_argument("claims", metavar="CLAIMS.json", help='claims file ("-" = stdin)')
    p.set_defaults(func=run_sign)

    r = sub.add_parser(
        "revocations",
        help="write a revocation list of licence serials",
        description="Write the revocation list JSON (DESIGN.md format) for the given licence "
        "serials (32 hex digits each), optionally added to an existing list.",
    )
    r.add_argument("--merge", metavar="REVOKED.json", help="start from this existing list")
    r.add_argument("--out", metavar="REVOKED.json", help="write here (replacing it), not stdout")
    r.add_argument("serials", nargs="*", metavar="SERIAL_HEX", help="licence serials to revoke")
    r.set_defaults(func=run_revocations)


def run_sign(args: argparse.Namespace) -> int:
    key = load_signing_key(args.key)
    source = "stdin" if args.claims == "-" else repr(args.claims)
    try:
        doc = json.loads(read_text(args.claims, "claims file"))
    except json.JSONDecodeError as e:
        raise CliError(f"claims file {source}: not JSON: {e}") from None
    docs = doc if isinstance(doc, list) else [doc]
    if not docs:
        raise CliError(f"claims file {source}: the array is empty")
    where = [
        f"claims file {source}" + (f", item {i}" if isinstance(doc, list) else "")
        for i in range(len(docs))
    ]
    claims: list[dict[str, Any]] = []
    for item, place in zip(docs, where, strict=True):
        try:
            claims.append(claims_from_json(item))
        except ClaimsInputError as e:
            raise CliError(f"{place}: {e}") from None
    try:
        texts = key.sign_many(claims) if len(claims) > 1 else [key.sign_licence(claims[0])]
    except rust_core.ClaimsError as e:
        raise CliError(f"{where[_refused_item(key, claims)]}: refused: {e}") from None
    output = "".join(t + "\n" for t in texts)
    if args.out is None:
        print(output, end="", flush=True)
    else:
        write_atomic(args.out, output.encode(), overwrite=True)
    for c in claims:
        warn(f"fleet sign: licence serial {c['cti'].hex()} (kid {key.kid.hex()}, {key.alg})")
    return 0


def _refused_item(key: rust_core.SigningKey, claims: list[dict[str, Any]]) -> int:
    """Which claims the batch was refused for (only on that error path: signing costs)."""
    for i, c in enumerate(claims):
        try:
            key.sign_licence(c)
        except rust_core.ClaimsError:
            return i
    return 0


def run_revocations(args: argparse.Namespace) -> int:
    serials = {parse_serial(s) for s in args.serials}
    if args.merge is not None:
        serials |= _read_revocations(args.merge)
    if not serials and args.merge is None:
        raise CliError("give at least one SERIAL_HEX (or --merge an existing list)")
    text = rust_core.revocation_list_json(sorted(serials))
    if not text.endswith("\n"):
        text += "\n"
    if args.out is None:
        print(text, end="")
    else:
        write_atomic(args.out, text.encode(), overwrite=True)
        warn(f"fleet revocations: wrote {args.out!r} ({len(serials)} revoked serials)")
    return 0


def _read_revocations(path: str) -> set[bytes]:
    try:
        doc = json.loads(read_text(path, "revocation list"))
    except json.JSONDecodeError as e:
        raise CliError(f"revocation list {path!r}: not JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("v") != 1 or not isinstance(doc.get("revoked"), list):
        raise CliError(f'revocation list {path!r}: expected {{"v": 1, "revoked": [...]}}')
    out: set[bytes] = set()
    for i, entry in enumerate(doc["revoked"]):
        if not isinstance(entry, str):
            raise CliError(f"revocation list {path!r}: entry {i} is not a hex string")
        try:
            out.add(parse_serial(entry))
        except CliError as e:
            raise CliError(f"revocation list {path!r}: entry {i}: {e}") from None
    return out
