"""The printable licence: an A4 PDF in the layout of a 营业执照, with the signed QR code.

Drawn with fpdf2 in a Chinese TrueType font from Debian (fonts-wqy-microhei, which set-up
installs; the font is subset, so the PDF carries only the glyphs used and its text stays
extractable). The QR code is drawn as vector squares from rust_core's module matrix, 40 mm
wide with its quiet zone: a printer prints it sharp at any resolution, and a handheld scanner
reads it from a hand's length.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fpdf import FPDF

import rust_core

#: Chinese TrueType fonts, first found wins (Debian packages fonts-wqy-microhei,
#: fonts-wqy-zenhei, fonts-arphic-uming/ukai).
FONT_CANDIDATES = (
    Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"),
    Path("/usr/share/fonts/truetype/wqy/wqy-zenhei.ttc"),
    Path("/usr/share/fonts/truetype/arphic/uming.ttc"),
    Path("/usr/share/fonts/truetype/arphic/ukai.ttc"),
)
#: The printed QR code, quiet zone included.
QR_SIZE_MM = 40.0
QUIET_MODULES = 4
_FONT = "cjk"
_RED = (190, 30, 30)


class FontMissing(RuntimeError):
    """No Chinese font to draw the licence with."""


def find_font(configured: Path | None = None) -> Path:
    if configured is not None:
        if not configured.is_file():
            raise FontMissing(f"licence font {configured} does not exist")
        return configured
    for path in FONT_CANDIDATES:
        if path.is_file():
            return path
    raise FontMissing(
        "no Chinese font for printing licences: apt-get install fonts-wqy-microhei "
        "(or set FLEET_LICENCE_FONT_FILE to a TrueType font)"
    )


def _date_zh(day: str) -> str:
    """ "2024-03-18" -> "2024年03月18日" (other text unchanged)."""
    parts = day.split("-")
    if len(parts) == 3 and all(p.isdigit() for p in parts):
        return f"{parts[0]}年{parts[1]}月{parts[2]}日"
    return day


def licence_rows(lic: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(label, value) rows of the licence body, worded as the licence kind has them."""
    kind = str(lic.get("3", ""))
    sole = kind == "个体工商户"
    rows = [("名称", str(lic.get("2", ""))), ("类型", kind)]
    rows.append(("经营者" if sole else "法定代表人", str(lic.get("4", ""))))
    rows.append(("经营场所" if sole else "住所", str(lic.get("5", ""))))
    if sole:
        rows.append(("组成形式", "个人经营"))
    if lic.get("6"):
        rows.append(("注册资本", str(lic["6"])))
    rows.append(("注册日期" if sole else "成立日期", _date_zh(str(lic.get("7", "")))))
    if lic.get("8"):
        rows.append(("经营范围", str(lic["8"])))
    return rows


def render_licence_pdf(
    text: str,
    claims: Mapping[str, Any],
    *,
    authority_name: str,
    font: Path | None = None,
    timezone: str = "Asia/Shanghai",
) -> bytes:
    """The licence as A4 PDF bytes. `claims` in JSON form (`lic` keys "1"…"9", `cti` hex)."""
    lic: Mapping[str, Any] = claims.get("lic") or {}
    serial = str(claims.get("cti") or "")
    iat = claims.get("iat")
    issued = datetime.fromtimestamp(int(iat), UTC) if isinstance(iat, int) else datetime.now(UTC)
    issued_local = issued.astimezone(ZoneInfo(timezone))

    pdf = FPDF(orientation="portrait", unit="mm", format="A4")
    pdf.set_auto_page_break(False)
    pdf.set_creation_date(issued)
    pdf.set_title(f"营业执照 {lic.get('2', '')}")
    pdf.set_author(authority_name)
    pdf.set_creator("kiosk-fleet")
    pdf.add_font(_FONT, fname=str(find_font(font)))
    pdf.add_page()

    # Frame: a heavy outer line and a thin inner one, as on the printed form.
    pdf.set_draw_color(*_RED)
    pdf.set_line_width(1.2)
    pdf.rect(12, 12, 186, 273)
    pdf.set_line_width(0.3)
    pdf.rect(15, 15, 180, 267)
    pdf.set_draw_color(0, 0, 0)

    pdf.set_font(_FONT, size=9)
    pdf.set_xy(20, 19)
    pdf.cell(120, 5, f"编号：{serial}")

    pdf.set_font(_FONT, size=40)
    pdf.set_char_spacing(8)
    pdf.set_xy(15, 30)
    pdf.cell(180, 18, "营业执照", align="C")
    pdf.set_char_spacing(0)

    pdf.set_font(_FONT, size=12)
    pdf.set_xy(24, 66)
    pdf.cell(40, 7, "统一社会信用代码")
    pdf.set_font(_FONT, size=15)
    pdf.set_xy(24, 74)
    pdf.cell(100, 8, str(lic.get("1", "")))

    qr_x, qr_y = 146.0, 56.0
    draw_qr(pdf, text, qr_x, qr_y, QR_SIZE_MM)
    pdf.set_font(_FONT, size=8)
    pdf.set_xy(qr_x, qr_y + QR_SIZE_MM + 1)
    pdf.cell(QR_SIZE_MM, 4, "扫描二维码核验真伪", align="C")

    y = 112.0
    for label, value in licence_rows(lic):
        pdf.set_font(_FONT, size=12)
        pdf.set_xy(28, y)
        pdf.cell(30, 8, label, align="L")
        pdf.set_xy(62, y)
        pdf.multi_cell(118, 8, value or "—", align="L")
        y = max(y + 11, pdf.get_y() + 3)

    pdf.set_font(_FONT, size=13)
    pdf.set_xy(110, 236)
    pdf.cell(75, 8, f"登记机关  {authority_name}", align="R")
    pdf.set_xy(110, 246)
    date = f"{issued_local.year}年{issued_local.month:02d}月{issued_local.day:02d}日"
    pdf.cell(75, 8, date, align="R")

    pdf.set_font(_FONT, size=7.5)
    pdf.set_text_color(90, 90, 90)
    pdf.set_xy(20, 268)
    term = lic.get("9")
    footer = f"签发机构代码 {claims.get('iss', '')}    二维码载有数字签名（LIC1），可离线核验"
    if term:
        footer += f"    打印终端 {term}"
    pdf.cell(170, 5, footer)
    return bytes(pdf.output())


def draw_qr(pdf: FPDF, text: str, x: float, y: float, size: float) -> None:
    """The QR code of `text` as filled squares, its quiet zone included in `size`."""
    matrix: Sequence[str] = rust_core.qr_matrix(text)
    n = len(matrix)
    module = size / (n + 2 * QUIET_MODULES)
    pdf.set_fill_color(255, 255, 255)
    pdf.rect(x, y, size, size, style="F")
    pdf.set_fill_color(0, 0, 0)
    origin_x = x + QUIET_MODULES * module
    origin_y = y + QUIET_MODULES * module
    for r, row in enumerate(matrix):
        c = 0
        while c < n:
            if row[c] != "1":
                c += 1
                continue
            start = c
            while c < n and row[c] == "1":
                c += 1
            # Overlap each run by a hair into the next row so no light seam shows between rows.
            pdf.rect(
                origin_x + start * module,
                origin_y + r * module,
                (c - start) * module,
                module + (0.02 if r + 1 < n else 0),
                style="F",
            )
