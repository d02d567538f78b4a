"""QR codes drawn by rust_core: they decode (zxing-cpp), they are segno's symbols module for
module, SVG and PNG draw the same modules, and what cannot be drawn is refused clearly.

rust_core's encoder: QR Model 2, one alphanumeric segment, error correction Q, the smallest
version, the mask by the ISO/IEC 18004 penalty rules (evaluated as segno does), quiet zone 4.
"""

from __future__ import annotations

import io
import random
import re
import secrets
import struct
import zlib
from typing import Any
from unittest import mock

import pytest
import segno
import zxingcpp
from lic1_reference import make_claims
from PIL import Image
from test_seal_concurrency import longest_gap_during

import rust_core

QUIET = 4
ALNUM = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"
NOW = 1_767_225_600
# Chinese characters: random picks compress poorly, so longer fields make bigger codes.
HANZI = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]  # CJK Unified Ideographs


def qr_claims(rng: random.Random, scope_chars: int, alg_term: str) -> dict[str, Any]:
    scope = "".join(rng.choice(HANZI) for _ in range(scope_chars))
    claims = make_claims(iat=NOW, exp=NOW + 86_400 * 365, term=alg_term)
    if scope:
        claims["lic"][8] = scope
    return claims


@pytest.fixture(scope="module")
def keys() -> dict[str, rust_core.SigningKey]:
    return {alg: rust_core.SigningKey.generate(alg) for alg in rust_core.ALGORITHMS}


@pytest.fixture(scope="module")
def lic1_texts(keys: dict[str, rust_core.SigningKey]) -> list[str]:
    """Real LIC1 texts, every algorithm, from a bare licence to one near version 40-Q."""
    rng = random.Random(7)
    texts = []
    for alg, key in keys.items():
        for scope_chars in (0, 0, 10, 40, 80, 150, 250, 400, 550):
            texts.append(key.sign_licence(qr_claims(rng, scope_chars, f"T-{alg}")))
    return texts


def iso_padding_bits(buff: Any, version: int, length: int) -> None:
    """ISO/IEC 18004:2015 7.4.10: zero bits up to the next codeword boundary, none when the bit
    stream already ends on one. segno 1.6 writes `8 - length % 8` bits, a whole 0x00 codeword
    in place of the first 0xEC pad codeword when the data ends on a boundary."""
    buff.extend([0] * (-length % 8))


def segno_raw(text: str) -> segno.QRCode:
    return segno.make(text, error="q", mode="alphanumeric", micro=False, boost_error=False)


def segno_make(text: str) -> segno.QRCode:
    """segno's symbol for `text`, its padding put right (iso_padding_bits)."""
    with mock.patch.object(segno.encoder, "write_padding_bits", iso_padding_bits):
        return segno_raw(text)


def ends_on_codeword_boundary(text: str, version: int) -> bool:
    count_bits = 9 if version <= 9 else 11 if version <= 26 else 13
    bits = 4 + count_bits + 11 * (len(text) // 2) + 6 * (len(text) % 2)
    return (bits + 4) % 8 == 0  # with the terminator (always whole when the data ends there)


def segno_rows(qr: segno.QRCode) -> list[str]:
    return ["".join("1" if m else "0" for m in row) for row in qr.matrix]


def with_quiet_zone(rows: list[str]) -> list[str]:
    width = len(rows[0]) + 2 * QUIET
    blank = "0" * width
    pad = "0" * QUIET
    return [blank] * QUIET + [pad + r + pad for r in rows] + [blank] * QUIET


def svg_rows(svg: str) -> list[str]:
    """The modules an SVG from qr_svg draws, read back from its one path."""
    match = re.fullmatch(
        r'<svg xmlns="http://www.w3.org/2000/svg" width="(\d+)" height="(\d+)" '
        r'viewBox="0 0 (\d+) (\d+)" shape-rendering="crispEdges">'
        r'<rect width="100%" height="100%" fill="#fff"/>'
        r'<path fill="#000" d="([^"]*)"/></svg>\n',
        svg,
    )
    assert match, svg[:300]
    width, height, vb_w, vb_h, path = match.groups()
    assert vb_w == vb_h and width == height
    size = int(vb_w)
    grid = [[0] * size for _ in range(size)]
    segments = re.findall(r"M(\d+) (\d+)h(\d+)v1h-(\d+)z", path)
    assert "".join(f"M{x} {y}h{n}v1h-{m}z" for x, y, n, m in segments) == path
    for x, y, n, m in segments:
        assert n == m
        for i in range(int(x), int(x) + int(n)):
            assert grid[int(y)][i] == 0, "segments overlap"
            grid[int(y)][i] = 1
    return ["".join(map(str, row)) for row in grid]


def png_chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, pos = [], 8
    while pos < len(png):
        (length,) = struct.unpack(">I", png[pos : pos + 4])
        kind, data = png[pos + 4 : pos + 8], png[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", png[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + data), kind
        chunks.append((kind, data))
        pos += 12 + length
    assert pos == len(png)
    return chunks


def png_rows(png: bytes, module_px: int) -> list[str]:
    """The modules of a PNG from qr_png, sampled at each module's centre (decoded by Pillow)."""
    img = Image.open(io.BytesIO(png))
    img.load()
    side = img.size[0]
    assert img.size == (side, side) and side % module_px == 0
    gray = img.convert("L")
    modules = side // module_px
    centre = module_px // 2
    return [
        "".join(
            "1" if gray.getpixel((x * module_px + centre, y * module_px + centre)) == 0 else "0"
            for x in range(modules)
        )
        for y in range(modules)
    ]


def decode(png: bytes) -> list[Any]:
    img = Image.open(io.BytesIO(png))
    return list(zxingcpp.read_barcodes(img, formats=zxingcpp.BarcodeFormat.QRCode))


# --- decoding ------------------------------------------------------------------------------


def test_texts_span_many_versions(lic1_texts: list[str]) -> None:
    versions = {(len(rust_core.qr_matrix(t)) - 17) // 4 for t in lic1_texts}
    assert min(versions) <= 17 and max(versions) >= 30 and len(versions) >= 8, versions


def test_lic1_codes_decode_with_zxing(lic1_texts: list[str]) -> None:
    for text in lic1_texts:
        matrix = rust_core.qr_matrix(text)
        for module_px in (2, 4):
            found = decode(rust_core.qr_png(text, module_px))
            assert len(found) == 1, (len(text), module_px)
            code = found[0]
            assert code.text == text
            assert code.ec_level == "Q"
            assert int(code.extra["Version"]) == (len(matrix) - 17) // 4


def test_svg_decodes_with_zxing(lic1_texts: list[str]) -> None:
    """The SVG, rasterised trivially (one pixel per module, scaled up), decodes too."""
    for text in lic1_texts[::3]:
        rows = svg_rows(rust_core.qr_svg(text, 3))
        img = Image.new("L", (len(rows), len(rows)), 255)
        img.putdata([0 if c == "1" else 255 for row in rows for c in row])
        img = img.resize((len(rows) * 3, len(rows) * 3), Image.Resampling.NEAREST)
        found = list(zxingcpp.read_barcodes(img, formats=zxingcpp.BarcodeFormat.QRCode))
        assert [f.text for f in found] == [text]


def test_issued_licences_verify_after_the_scan(keys: dict[str, rust_core.SigningKey]) -> None:
    """Sign, draw, scan, verify: the whole path a printed licence takes."""
    key = keys["EdDSA"]
    store = rust_core.TrustStore.from_keys([key], issuer="CN-510107")
    rng = random.Random(11)
    issued = key.issue_many([qr_claims(rng, n, "T-SCAN") for n in (0, 60, 200)], 3)
    for text, _svg, png in issued:
        (code,) = decode(png)
        assert code.text == text
        assert store.verify(code.text, at=NOW + 60).verdict == "valid"


# --- the same symbol as segno --------------------------------------------------------------


def test_matrix_equals_segno_for_lic1_texts(lic1_texts: list[str]) -> None:
    for text in lic1_texts:
        qr = segno_make(text)
        rows = rust_core.qr_matrix(text)
        assert len(rows) == (qr.version * 4 + 17), (len(text), qr.version)
        assert rows == segno_rows(qr), f"{len(text)} chars, segno mask {qr.mask}"


def test_mask_equals_segno_and_zxing(lic1_texts: list[str]) -> None:
    for text in lic1_texts[::4]:
        (code,) = decode(rust_core.qr_png(text, 2))
        assert code.extra["DataMask"] == segno_make(text).mask


def test_segno_padding_quirk() -> None:
    """Where the data and terminator end on a codeword boundary, segno inserts a 0x00 codeword
    before the pad codewords 0xEC 0x11 … (ISO 18004 7.4.10 adds no padding bits there); we pad
    by the standard. Both symbols decode to the same text; with segno's padding put right they
    are identical."""
    text = "8 4G7VSU-O"  # 10 characters, version 1: 4 + 9 + 55 + 4 = 72 bits, a boundary
    assert ends_on_codeword_boundary(text, 1)
    ours = rust_core.qr_matrix(text)
    assert ours != segno_rows(segno_raw(text))
    assert ours == segno_rows(segno_make(text))
    out = io.BytesIO()
    segno_raw(text).save(out, kind="png", scale=3)
    assert [b.text for b in decode(out.getvalue())] == [text]
    assert [b.text for b in decode(rust_core.qr_png(text))] == [text]
    # and where the data does not end on a boundary, segno as it is agrees
    text = "8 4G7VSU-OX"
    assert not ends_on_codeword_boundary(text, 1)
    assert rust_core.qr_matrix(text) == segno_rows(segno_raw(text))


def test_matrix_equals_segno_at_every_version() -> None:
    """Random alphanumeric texts filling every version 1-40 to the brim and just past the
    previous one: version choice, block layout, alignment and version information, masks."""
    rng = random.Random(2024)
    previous_max = 0
    masks = set()
    for version in range(1, 41):
        # the most characters this version holds at Q, from segno's capacity table (bits)
        capacity = segno.consts.SYMBOL_CAPACITY[version][segno.consts.ERROR_LEVEL_Q]
        count_bits = 9 if version <= 9 else 11 if version <= 26 else 13
        most = max(
            n for n in range(2421) if 4 + count_bits + 11 * (n // 2) + 6 * (n % 2) <= capacity
        )
        for n in (previous_max + 1, most):
            text = "".join(rng.choice(ALNUM) for _ in range(n))
            qr = segno_make(text)
            assert qr.version == version
            assert rust_core.qr_matrix(text) == segno_rows(qr), (version, n, qr.mask)
            masks.add(qr.mask)
        previous_max = most
    assert previous_max == rust_core.QR_MAX_CHARS == 2420
    assert masks == set(range(8)), "every mask should have been chosen somewhere"


# --- SVG and PNG: the same modules, well formed -----------------------------------------------


@pytest.mark.parametrize("module_px", [1, 2, 4, 7, 64])
def test_svg_and_png_are_the_same_matrix(lic1_texts: list[str], module_px: int) -> None:
    for text in lic1_texts[::5] if module_px < 64 else lic1_texts[:1]:
        expected = with_quiet_zone(rust_core.qr_matrix(text))
        full = len(expected)
        svg = rust_core.qr_svg(text, module_px)
        assert f'width="{full * module_px}" height="{full * module_px}"' in svg
        assert f'viewBox="0 0 {full} {full}"' in svg
        assert svg.count("<path") == 1
        assert svg_rows(svg) == expected
        assert png_rows(rust_core.qr_png(text, module_px), module_px) == expected


def test_png_is_a_valid_png(lic1_texts: list[str]) -> None:
    text = lic1_texts[4]
    modules = len(rust_core.qr_matrix(text)) + 2 * QUIET
    for module_px in (1, 3, 4):
        png = rust_core.qr_png(text, module_px)
        chunks = png_chunks(png)
        kinds = [k for k, _ in chunks]
        assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND" and b"IDAT" in kinds
        width, height, depth, color, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
        side = modules * module_px
        assert (width, height) == (side, side)
        assert (depth, color, comp, filt, interlace) == (1, 0, 0, 0, 0)
        raw = zlib.decompress(b"".join(d for k, d in chunks if k == b"IDAT"))
        assert len(raw) == side * (1 + (side + 7) // 8)
        with Image.open(io.BytesIO(png)) as img:
            img.verify()
        with Image.open(io.BytesIO(png)) as img:
            assert img.mode == "1" and img.size == (side, side)
            # the quiet zone's corner is white, the finder pattern's corner black
            assert img.getpixel((0, 0)) == 255
            assert img.getpixel((QUIET * module_px, QUIET * module_px)) == 0


def test_default_module_px_is_4(lic1_texts: list[str]) -> None:
    text = lic1_texts[0]
    assert rust_core.qr_svg(text) == rust_core.qr_svg(text, 4)
    assert rust_core.qr_png(text) == rust_core.qr_png(text, module_px=4)


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.parametrize("draw", [rust_core.qr_svg, rust_core.qr_png, rust_core.qr_matrix])
def test_refuses_what_it_cannot_draw(draw: Any) -> None:
    with pytest.raises(ValueError, match="empty"):
        draw("")
    with pytest.raises(ValueError, match=r"'a' at index 5 is not in the QR alphanumeric set"):
        draw("LIC1:abc")
    with pytest.raises(ValueError, match="alphanumeric set"):
        draw("LIC1:许可证")
    with pytest.raises(ValueError, match=r"2421 characters, more than a version 40-Q QR code"):
        draw("A" * 2421)
    with pytest.raises(TypeError):
        draw(b"LIC1:ABC")
    assert draw("A" * 2420)  # the largest symbol, full


@pytest.mark.parametrize("draw", [rust_core.qr_svg, rust_core.qr_png])
@pytest.mark.parametrize("module_px", [0, -1, 65, 10**6])
def test_module_px_out_of_range(draw: Any, module_px: int) -> None:
    with pytest.raises(ValueError, match="module_px must be 1 to 64"):
        draw("LIC1:ABC", module_px)


def test_too_big_for_q_but_a_valid_lic1(keys: dict[str, rust_core.SigningKey]) -> None:
    """A licence text under LIC1's 4,296-character limit (40-L) but over 40-Q's 2,420: signed,
    but refused for drawing, and issue_many names the claims."""
    rng = random.Random(3)
    key = keys["EdDSA"]
    claims = qr_claims(rng, 1100, "T-BIG")
    text = key.sign_licence(claims)
    assert 2420 < len(text) <= rust_core.MAX_TEXT_CHARS
    with pytest.raises(ValueError, match="more than a version 40-Q QR code holds"):
        rust_core.qr_png(text)
    ok = qr_claims(rng, 0, "T-OK")
    with pytest.raises(rust_core.ClaimsError, match=r"claims\[1\]: .*40-Q"):
        key.issue_many([ok, claims])


# --- bulk issuance -------------------------------------------------------------------------


def test_issue_many(keys: dict[str, rust_core.SigningKey]) -> None:
    rng = random.Random(5)
    for alg, key in keys.items():
        claims = [qr_claims(rng, n % 120, f"T-{i:04d}") for i, n in enumerate(range(0, 600, 37))]
        issued = key.issue_many(claims, module_px=3)
        assert len(issued) == len(claims)
        store = rust_core.TrustStore.from_keys([key])
        for c, (text, svg, png) in zip(claims, issued, strict=True):
            v = store.verify(text, at=NOW + 60)
            assert v.verdict == "valid", (alg, v.detail)
            assert v.claims is not None and v.claims["lic"][9] == c["lic"][9]
            assert isinstance(svg, str) and isinstance(png, bytes)
            assert svg == rust_core.qr_svg(text, 3)
            assert png == rust_core.qr_png(text, 3)
    assert keys["EdDSA"].issue_many([]) == []


def test_issue_many_refusals(keys: dict[str, rust_core.SigningKey]) -> None:
    key = keys["EdDSA"]
    good = make_claims(iat=NOW)
    bad = make_claims(iat=NOW, uscc="91350100M000100Y44")  # wrong check character
    with pytest.raises(rust_core.ClaimsError, match=r"claims\[1\]"):
        key.issue_many([good, bad])
    with pytest.raises(ValueError, match="module_px"):
        key.issue_many([good], module_px=0)
    with pytest.raises(TypeError):
        key.issue_many([42])


def test_issue_many_releases_the_gil(keys: dict[str, rust_core.SigningKey]) -> None:
    """While issue_many signs and draws, another Python thread keeps running."""
    key = keys["EdDSA"]
    batch = [make_claims(iat=NOW, cti=secrets.token_bytes(16)) for _ in range(1500)]
    issued: list[tuple[str, str, bytes]] = []
    duration, gap = longest_gap_during(lambda: issued.extend(key.issue_many(batch, 2)))
    assert len(issued) == 1500 and len({t for t, _, _ in issued}) == 1500
    assert duration > 0.2, "the batch is too small to tell"
    assert gap < duration / 2, f"main thread stalled {gap:.3f}s of a {duration:.3f}s call"
