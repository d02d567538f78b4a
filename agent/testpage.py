"""The test page a `print_test_page` remote command prints, in the formats printers take.

What it says: the terminal, the time, the command's id, a Chinese line (so a page that prints
tofu or nothing shows a font or encoding problem at once), and the printer's status as the agent
read it just before printing.

Formats, in order of preference (a printer lists what it takes in `document-format-supported`):
- `application/pdf`: one A4 page, built by hand (no PDF library). Latin text in Helvetica, the
  Chinese line in Adobe's STSong-Light with the UniGB-UTF16-H CMap: both are standard PDF fonts
  a PDF printer carries, so nothing is embedded and the file is about 2 KiB.
- `text/plain`: the same lines as UTF-8.
IPP Everywhere makes `image/pwg-raster` mandatory and PDF optional; a raster page needs a
rasteriser with a CJK font, which the agent does not carry, so a printer that takes raster only
cannot print this test page (the command fails and says so).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

TITLE_ZH: Final = "自助终端测试页"
#: Formats this module renders, best first.
FORMATS: Final = ("application/pdf", "text/plain")
#: A4 in PDF points.
PAGE_W, PAGE_H = 595, 842


@dataclass(frozen=True)
class TestPage:
    __test__ = False  # a name pytest would otherwise try to collect

    terminal_id: str
    printed_at: str
    command_id: str
    #: One line per piece of printer status ("State: idle", "Reasons: media-low", ...).
    printer_lines: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        return [
            "Kiosk test page",
            TITLE_ZH,
            f"Terminal: {self.terminal_id}",
            f"Time: {self.printed_at}",
            f"Command: {self.command_id}",
            *self.printer_lines,
        ]


def choose_format(supported: list[str] | tuple[str, ...]) -> str | None:
    """The best format of ours the printer lists (a `text/plain; charset=utf-8` counts)."""
    for mime in FORMATS:
        for offered in supported:
            if offered.split(";")[0].strip().lower() == mime:
                return offered
    return None


def render(page: TestPage, mime: str) -> bytes:
    kind = mime.split(";")[0].strip().lower()
    if kind == "application/pdf":
        return render_pdf(page)
    if kind == "text/plain":
        return render_text(page)
    raise ValueError(f"cannot render a test page as {mime}")


def render_text(page: TestPage) -> bytes:
    return ("\n".join(page.lines()) + "\n").encode("utf-8")


def _pdf_literal(text: str) -> bytes:
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    return b"(" + escaped.encode("latin-1", "replace") + b")"


def _pdf_hex_utf16(text: str) -> bytes:
    return b"<" + text.encode("utf-16-be").hex().upper().encode() + b">"


def _content(page: TestPage) -> bytes:
    ops = [
        # A frame and a grey scale: a missing edge or band shows the print path's faults.
        b"2 w 36 36 523 770 re S",
        *(
            f"{g / 4:.2f} g {60 + i * 120} 60 110 40 re f".encode()
            for i, g in enumerate((0, 1, 2, 3))
        ),
        b"0 g",
    ]
    y = 760
    for i, line in enumerate(page.lines()):
        size = 22 if i < 2 else 12
        if line.isascii():
            text = b"/F1 %d Tf " % size + _pdf_literal(line)
        else:
            text = b"/F2 %d Tf " % size + _pdf_hex_utf16(line)
        ops.append(b"BT 60 %d Td " % y + text + b" Tj ET")
        y -= 34 if i < 2 else 20
    return b"\n".join(ops) + b"\n"


def render_pdf(page: TestPage) -> bytes:
    content = _content(page)
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 %d %d] " % (PAGE_W, PAGE_H)
        + b"/Resources << /Font << /F1 4 0 R /F2 5 0 R >> >> /Contents 6 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Type /Font /Subtype /Type0 /BaseFont /STSong-Light /Encoding /UniGB-UTF16-H "
        b"/DescendantFonts [7 0 R] >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"endstream",
        b"<< /Type /Font /Subtype /CIDFontType0 /BaseFont /STSong-Light "
        b"/CIDSystemInfo << /Registry (Adobe) /Ordering (GB1) /Supplement 4 >> "
        b"/FontDescriptor 8 0 R /DW 1000 >>",
        b"<< /Type /FontDescriptor /FontName /STSong-Light /Flags 6 "
        b"/FontBBox [-25 -254 1000 880] /ItalicAngle 0 /Ascent 880 /Descent -120 "
        b"/CapHeight 880 /StemV 93 >>",
    ]
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    return bytes(out)
