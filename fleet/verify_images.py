"""`fleet verify --images DIR`: find the QR codes in scanned images or photos, verify each, and
write CSV and HTML reports (the auditor's bulk, offline check)."""

from __future__ import annotations

import csv
import html
import io
import json
import os
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import rust_core
from fleet.cli_common import CliError, warn, write_atomic
from fleet.licence_claims import claims_to_json
from fleet.qr_images import (
    IMAGE_SUFFIXES,
    ImageSupportMissing,
    ImageUnreadable,
    decode_qr_texts,
    ensure_available,
    image_size,
)

SIGNED_VERDICTS = frozenset({"valid", "revoked", "expired", "not_yet_valid"})
#: Pseudo-verdicts of an image itself: nothing to verify in it.
NO_CODE = "no_code"
UNREADABLE = "unreadable"
EXCERPT_CHARS = 40

#: What each verdict means to an auditor (the HTML report's words).
MEANING = {
    "valid": "genuine 真实有效",
    "malformed": "damaged or not a licence code 无法识别",
    "too_large": "too large 数据过大",
    "unsupported_alg": "unsupported signature 不支持的签名算法",
    "unknown_kid": "unknown issuer 未知签发机构",
    "bad_signature": "forged or tampered 伪造或篡改",
    "revoked": "revoked 已吊销",
    "expired": "expired 已过期",
    "not_yet_valid": "not yet valid 尚未生效",
    NO_CODE: "no QR code found 未找到二维码",
    UNREADABLE: "unreadable image 图像无法读取",
}


@dataclass(frozen=True)
class Row:
    """One line of the report: a code found in an image, or an image without one."""

    file: str
    code: int | None  # 1-based index of the code in its image
    text: str
    verdict: str
    serial: str
    name: str
    detail: str
    claims: dict[str, object] | None = None
    kid: str | None = None
    alg: str | None = None

    @property
    def excerpt(self) -> str:
        t = self.text
        return t if len(t) <= EXCERPT_CHARS else t[:EXCERPT_CHARS] + "…"


def image_files(directory: str) -> list[Path]:
    root = Path(directory)
    if not root.exists():
        raise CliError(f"--images {directory!r}: no such folder")
    if not root.is_dir():
        raise CliError(f"--images {directory!r}: not a folder")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _decode(path: Path) -> list[str] | str:
    """The texts of the codes in one image, or why it could not be read."""
    try:
        with path.open("rb") as f:
            # The server's guard, per image: its header is checked against the pixel limit
            # before the file is read whole or anything is decoded.
            image_size(f)
            f.seek(0)
            data = f.read()
        return decode_qr_texts(data)
    except OSError as e:
        return f"cannot read ({e.strerror})"
    except ImageUnreadable as e:
        return str(e)


def verify_images(directory: str, store: rust_core.TrustStore, at: int | None = None) -> list[Row]:
    """Every image under `directory` (sorted), its codes decoded and verified, as report rows."""
    files = image_files(directory)
    root = Path(directory)
    try:
        ensure_available()
    except ImageSupportMissing as e:
        raise CliError(str(e)) from None
    # zxing-cpp releases the GIL while it searches: images decode on every core.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        decoded = list(pool.map(_decode, files))
    texts = [t.strip() for d in decoded if isinstance(d, list) for t in d]
    verdicts = iter(store.verify_many(texts, at) if texts else [])
    rows: list[Row] = []
    for path, found in zip(files, decoded, strict=True):
        name = path.relative_to(root).as_posix()
        if isinstance(found, str):
            rows.append(Row(name, None, "", UNREADABLE, "", "", found))
            continue
        if not found:
            rows.append(Row(name, None, "", NO_CODE, "", "", "no QR code found in the image"))
            continue
        for i, text in enumerate(found, 1):
            rows.append(_row(name, i, text, next(verdicts)))
    return rows


def _row(file: str, index: int, text: str, v: rust_core.Verification) -> Row:
    serial = name = ""
    claims = None
    if v.verdict in SIGNED_VERDICTS and v.claims is not None:
        claims = claims_to_json(v.claims)
        serial = str(claims.get("cti") or "")
        lic = claims.get("lic")
        if isinstance(lic, dict) and isinstance(lic.get("2"), str):
            name = lic["2"]
    detail = "" if v.verdict == "valid" else (v.detail or v.verdict)
    return Row(
        file,
        index,
        text,
        v.verdict,
        serial,
        name,
        detail,
        claims,
        v.kid.hex() if v.kid is not None else None,
        v.alg,
    )


def render_line(row: Row, as_json: bool) -> str:
    """One stdout line: the file, then `fleet verify`'s columns (or its JSON, with "file")."""
    from fleet.verify_cli import printable

    if as_json:
        doc = {
            "file": row.file,
            "code": row.code,
            "verdict": row.verdict,
            "kid": row.kid,
            "alg": row.alg,
            "claims": row.claims,
            "detail": row.detail or None,
        }
        return json.dumps(doc, ensure_ascii=False)
    cols = [row.file, row.verdict, row.serial or "-", row.name or "-", row.detail or "-"]
    return "\t".join(printable(c) for c in cols)


CSV_HEADER = ("file", "code", "text_excerpt", "verdict", "serial", "name", "detail")


def _cell(value: str) -> str:
    """Text a spreadsheet would run as a formula (=, +, -, @ first) is quoted with '."""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def csv_report(rows: Sequence[Row]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\r\n")
    w.writerow(CSV_HEADER)
    for r in rows:
        w.writerow(
            [
                _cell(r.file),
                "" if r.code is None else str(r.code),
                _cell(r.excerpt),
                r.verdict,
                r.serial,
                _cell(r.name),
                _cell(r.detail),
            ]
        )
    return out.getvalue()


_STYLE = """
body{font-family:sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;width:100%}
th,td{border:1px solid #ccc;padding:.35em .6em;text-align:left;vertical-align:top}
th{background:#f3f3f3} code{font-size:.85em;word-break:break-all}
.v{font-weight:bold;white-space:nowrap}
.ok{background:#e5f6e5;color:#175e17} .bad{background:#fde8e8;color:#9b1c1c}
.warn{background:#fff4d6;color:#7a5200}
"""


def _css(verdict: str) -> str:
    if verdict == "valid":
        return "ok"
    if verdict in ("expired", "not_yet_valid", NO_CODE, UNREADABLE):
        return "warn"
    return "bad"


def html_report(rows: Sequence[Row], source: str, now: datetime | None = None) -> str:
    """A self-contained page (no scripts, no outside resources); everything read is escaped."""
    e = html.escape
    when = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")
    counts = Counter(r.verdict for r in rows)
    summary = ", ".join(f"{n} {e(v)}" for v, n in sorted(counts.items())) or "nothing found"
    lines = [
        "<!DOCTYPE html>",
        '<html lang="zh-CN"><head><meta charset="utf-8">',
        "<title>Licence verification report 营业执照核验报告</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>Licence verification report 营业执照核验报告</h1>",
        f"<p>Images in <code>{e(source)}</code>, checked {e(when)}: {summary}.</p>",
        "<table><thead><tr>",
        "".join(
            f"<th>{h}</th>" for h in ("File", "#", "Verdict", "Serial", "Name", "Detail", "Text")
        ),
        "</tr></thead><tbody>",
    ]
    for r in rows:
        lines.append(
            f'<tr class="{_css(r.verdict)}"><td>{e(r.file)}</td>'
            f"<td>{'' if r.code is None else r.code}</td>"
            f'<td class="v">{e(r.verdict)}<br><small>{e(MEANING.get(r.verdict, ""))}</small></td>'
            f"<td><code>{e(r.serial)}</code></td><td>{e(r.name)}</td><td>{e(r.detail)}</td>"
            f"<td><code>{e(r.excerpt)}</code></td></tr>"
        )
    lines.append("</tbody></table></body></html>\n")
    return "\n".join(lines)


def write_reports(
    rows: Sequence[Row], source: str, csv_path: str | None, html_path: str | None
) -> None:
    if csv_path is not None:
        # UTF-8 with a BOM: Excel then reads the Chinese names right.
        write_atomic(csv_path, ("\ufeff" + csv_report(rows)).encode(), overwrite=True)
        warn(f"fleet verify: wrote CSV report {csv_path!r}")
    if html_path is not None:
        write_atomic(html_path, html_report(rows, source).encode(), overwrite=True)
        warn(f"fleet verify: wrote HTML report {html_path!r}")
