"""`fleet verify`: the auditor's check of printed licences, one verdict per scanned line."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import rust_core
from fleet.cli_common import CliError, read_text, warn
from fleet.licence_claims import claims_to_json

#: Verdicts reached only after the signature checked out: their claims can be believed.
SIGNED_VERDICTS = frozenset({"valid", "revoked", "expired", "not_yet_valid"})

#: A line longer than this is cut here (and so still judged `too_large` by rust_core, whose
#: limit is far lower); it bounds memory when a file has no line breaks at all.
MAX_LINE_BYTES = 1 << 20
#: One read(2) from a file: every whole line in it is verified as one batch (verify_many).
READ_BYTES = 1 << 20

HELP = "check scanned licence QR texts against a trust list"
DESCRIPTION = """\
Reads LIC1 QR texts, one per line, from the FILEs or from standard input (a handheld scanner
types like a keyboard), and prints one verdict per line, in the order read. Each line is trimmed
of surrounding whitespace (and a trailing CR); blank lines are skipped and get no verdict.
A verdict is printed as soon as its line has been read.

Plain output: one line per text, four tab-separated fields:
  VERDICT  SERIAL  NAME  DETAIL
VERDICT is the first word (valid, malformed, too_large, unsupported_alg, unknown_kid,
bad_signature, revoked, expired, not_yet_valid). SERIAL (the licence serial, hex) and NAME (the
entity name) are shown only when the signature checked out (valid, revoked, expired,
not_yet_valid), otherwise "-". DETAIL says why a text is not valid ("-" when valid).

--json: one JSON object per line instead:
  {"verdict": …, "kid": "<hex>"|null, "alg": …|null,
   "claims": {"iss", "iat", "exp", "cti": "<hex>", "lic": {"1": …}} | null}
Claims are shown whenever they could be decoded, including for bad_signature: believe them
only when the verdict is one of those listed above for SERIAL.

--images DIR: instead of reading texts, find every QR code in the images (png, jpg; sub-folders
too) in DIR, verify each, and print one line per code: FILE then the four fields above (an
image with no code gets the verdict no_code, one that cannot be read unreadable). --csv FILE
and --html FILE also write the results as reports.

Exit status: 0 when every text is valid (also when there were none), 1 otherwise (with
--images also when an image has no readable code), 2 on bad usage (a missing, unreadable or
refused trust list, revocation list, FILE or DIR)."""


@dataclass(frozen=True)
class _Source:
    name: str
    fd: int


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "verify",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--trust", required=True, metavar="TRUST.json", help="trust list (issuer keys)")
    p.add_argument("--revoked", metavar="REVOKED.json", help="revocation list of licence serials")
    p.add_argument(
        "--at",
        type=_epoch_seconds,
        metavar="EPOCH_SECONDS",
        help="check validity at this time (seconds since 1970) instead of now",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object per text")
    p.add_argument(
        "--images",
        metavar="DIR",
        help="instead of texts: find and verify the QR codes in every image (png, jpg) in DIR",
    )
    p.add_argument("--csv", metavar="FILE", help="with --images: write a CSV report here")
    p.add_argument("--html", metavar="FILE", help="with --images: write an HTML report here")
    p.add_argument("files", nargs="*", metavar="FILE", help='files of QR texts ("-" = stdin)')
    p.set_defaults(func=run)


def _epoch_seconds(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number of seconds: {text!r}") from None
    if not 0 <= value < 1 << 63:
        raise argparse.ArgumentTypeError(f"out of range: {text!r}")
    return value


def load_store(trust_path: str, revoked_path: str | None) -> rust_core.TrustStore:
    """The trust store from the two files; a refusal names the file (and rust_core the entry)."""
    trust_json = read_text(trust_path, "trust list")
    try:
        store = rust_core.TrustStore.from_json(trust_json)
    except (rust_core.TrustListError, ValueError) as e:
        raise CliError(f"trust list {trust_path!r} refused: {e}") from None
    if revoked_path is None:
        return store
    revoked_json = read_text(revoked_path, "revocation list")
    try:
        return rust_core.TrustStore.from_json(trust_json, revoked_json)
    except (rust_core.TrustListError, ValueError) as e:
        raise CliError(f"revocation list {revoked_path!r} refused: {e}") from None


def run(args: argparse.Namespace) -> int:
    if args.images is None and (args.csv is not None or args.html is not None):
        raise CliError("--csv and --html are reports of --images")
    if args.images is not None and args.files:
        raise CliError("give either --images DIR or FILEs of texts, not both")
    store = load_store(args.trust, args.revoked)
    if args.images is not None:
        return _run_images(args, store)
    sources = _open_sources(args.files)
    render = render_json if args.json else render_plain
    if os.isatty(0) and any(s.fd == 0 for s in sources):
        warn("fleet verify: scan licences, one per line; Ctrl-D to finish")
    counts: Counter[str] = Counter()
    try:
        for batch in _text_batches(sources):
            results = (
                store.verify_many(batch, args.at)
                if len(batch) > 1
                else [store.verify(batch[0], args.at)]
            )
            sys.stdout.write("".join(render(v) + "\n" for v in results))
            sys.stdout.flush()
            counts.update(v.verdict for v in results)
    finally:
        for s in sources:
            if s.fd != 0:
                os.close(s.fd)
    total = counts.total()
    if total == 0:
        warn("fleet verify: no QR texts read")
    elif os.isatty(2):
        summary = ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items()))
        warn(f"fleet verify: {total} checked: {summary}")
    return 0 if counts.keys() <= {"valid"} else 1


def _run_images(args: argparse.Namespace, store: rust_core.TrustStore) -> int:
    from fleet import verify_images as vi

    rows = vi.verify_images(args.images, store, args.at)
    sys.stdout.write("".join(vi.render_line(r, args.json) + "\n" for r in rows))
    sys.stdout.flush()
    vi.write_reports(rows, args.images, args.csv, args.html)
    counts = Counter(r.verdict for r in rows)
    if not rows:
        warn(f"fleet verify: no images (png, jpg) in {args.images!r}")
    elif os.isatty(2):
        summary = ", ".join(f"{n} {verdict}" for verdict, n in sorted(counts.items()))
        warn(f"fleet verify: {len(rows)} results: {summary}")
    # An image without a readable code is not a pass: the auditor has to look at it.
    return 0 if counts.keys() <= {"valid"} else 1


def render_plain(v: rust_core.Verification) -> str:
    serial = name = "-"
    if v.verdict in SIGNED_VERDICTS and v.claims is not None:
        cti = v.claims.get("cti")
        if isinstance(cti, bytes):
            serial = cti.hex()
        lic = v.claims.get("lic")
        if isinstance(lic, dict) and isinstance(lic.get(2), str):
            name = printable(lic[2]) or "-"
    detail = "-" if v.verdict == "valid" else printable(v.detail or v.verdict)
    return f"{v.verdict}\t{serial}\t{name}\t{detail}"


def render_json(v: rust_core.Verification) -> str:
    doc: dict[str, Any] = {
        "verdict": v.verdict,
        "kid": v.kid.hex() if v.kid is not None else None,
        "alg": v.alg,
        "claims": claims_to_json(v.claims) if v.claims is not None else None,
    }
    return json.dumps(doc, ensure_ascii=False)


def printable(text: str) -> str:
    """Signed text shown on a terminal: tabs, line breaks, escape and bidi-override characters
    become U+FFFD, so a crafted name can neither break the one-line-per-text output nor
    repaint the screen."""
    if text.isprintable():  # the usual case, and much faster than looking at each character
        return text
    return "".join(
        "\ufffd" if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") else ch for ch in text
    )


def _open_sources(files: Sequence[str]) -> list[_Source]:
    """Open every input before reading any, so a misspelt FILE fails before any verdict."""
    if not files:
        return [_Source("<stdin>", 0)]
    sources: list[_Source] = []
    try:
        for name in files:
            if name == "-":
                sources.append(_Source("<stdin>", 0))
                continue
            try:
                fd = os.open(name, os.O_RDONLY)
            except FileNotFoundError:
                raise CliError(f"input file {name!r}: no such file") from None
            except OSError as e:
                raise CliError(f"input file {name!r}: cannot open ({e.strerror})") from None
            sources.append(_Source(name, fd))
            if stat.S_ISDIR(os.fstat(fd).st_mode):
                raise CliError(f"input file {name!r}: is a directory")
    except CliError:
        for s in sources:
            if s.fd != 0:
                os.close(s.fd)
        raise
    return sources


def _text_batches(sources: Sequence[_Source]) -> Iterator[list[str]]:
    """Non-blank trimmed lines, grouped by what one read(2) delivered.

    A terminal or a pipe delivers what has been typed or written so far (so each scan is
    answered at once), a file up to READ_BYTES (so files are verified in large batches).
    """
    for source in sources:
        splitter = LineSplitter(MAX_LINE_BYTES)
        while True:
            try:
                chunk = os.read(source.fd, READ_BYTES)
            except OSError as e:
                raise CliError(f"input file {source.name!r}: read failed ({e.strerror})") from None
            lines = splitter.feed(chunk) if chunk else splitter.finish()
            texts = [t for t in (_decode(line) for line in lines) if t]
            if texts:
                yield texts
            if not chunk:
                break


def _decode(line: bytes) -> str:
    # Not UTF-8 cannot be a LIC1 text anyway: replacement characters make it `malformed`.
    return line.decode("utf-8", errors="replace").lstrip("\ufeff").strip()


class LineSplitter:
    """Splits a byte stream into lines, keeping at most `max_bytes` of any one line."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._partial = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        lines = data.split(b"\n")
        last = lines.pop()
        if lines:
            self._keep(lines[0])
            lines[0] = bytes(self._partial)
            self._partial.clear()
            lines = [line[: self._max] for line in lines]
        self._keep(last)
        return lines

    def finish(self) -> list[bytes]:
        """The last line, when the input did not end with a line break."""
        if not self._partial:
            return []
        line = bytes(self._partial)
        self._partial.clear()
        return [line]

    def _keep(self, piece: bytes) -> None:
        room = self._max - len(self._partial)
        if room > 0:
            self._partial += piece[:room]
