"""`fleet verify --images DIR`: QR codes found in images (clean, photo-like, several, none,
broken) are verified like scanned texts, and reported on stdout, as CSV and as HTML."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageFilter

import rust_core
from fleet.demo import FORGED_NAME, NAME, forge_name, sample_claims
from tests.image_bombs import declared_png, many_scans_jpeg

ISSUER = "CN-510107"
NOW = 1_767_225_600


def _png(text: str, module_px: int = 4) -> Image.Image:
    return Image.open(io.BytesIO(rust_core.qr_png(text, module_px))).convert("L")


def photo_like(img: Image.Image) -> Image.Image:
    """A hand-held photo: scaled up unevenly, rotated, on grey paper, blurred, JPEG'd."""
    big = img.resize((int(img.width * 2.7), int(img.height * 2.7)), Image.Resampling.BILINEAR)
    paper = Image.new("L", (big.width + 300, big.height + 260), 205)
    paper.paste(big, (170, 110))
    rotated = paper.rotate(13, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=190)
    return rotated.filter(ImageFilter.GaussianBlur(1.6)).convert("RGB")


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    root = tmp_path_factory.mktemp("scans")
    key = rust_core.SigningKey.generate()
    genuine = key.sign_licence(sample_claims(NOW, bytes(range(16))))
    revoked = key.sign_licence(sample_claims(NOW, b"\xee" * 16))
    tampered = forge_name(genuine, NAME, FORGED_NAME)
    (root / "trust.json").write_text(rust_core.trust_list_json([key], ISSUER))
    (root / "revoked.json").write_text(rust_core.revocation_list_json([b"\xee" * 16]))
    images = root / "images"
    (images / "sub").mkdir(parents=True)
    _png(genuine).save(images / "01-genuine.png")
    _png(tampered).save(images / "02-tampered.png")
    _png(revoked).save(images / "03-revoked.jpg", quality=92)
    photo_like(_png(genuine, 3)).save(images / "sub" / "04-photo.jpeg", quality=80)
    Image.new("RGB", (300, 200), (240, 240, 240)).save(images / "05-blank.png")
    (images / "06-broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    two = Image.new("L", (700, 340), 255)
    two.paste(_png(genuine, 2), (10, 10))
    two.paste(_png(tampered, 2), (360, 10))
    two.save(images / "07-two.png")
    (images / "notes.txt").write_text("ignored")
    return {"root": root, "genuine": genuine, "tampered": tampered}


def fleet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fleet", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        env={**os.environ, "PYTHONIOENCODING": "utf-8"},
    )


def test_photo_like_variant_still_decodes(case: dict[str, object]) -> None:
    from fleet.qr_images import decode_qr_texts

    root = case["root"]
    assert isinstance(root, Path)
    data = (root / "images" / "sub" / "04-photo.jpeg").read_bytes()
    assert decode_qr_texts(data) == [case["genuine"]]


def test_images_verified_reported_and_exit_1(case: dict[str, object]) -> None:
    root = case["root"]
    assert isinstance(root, Path)
    csv_path, html_path = root / "report.csv", root / "report.html"
    out = fleet(
        "verify", "--trust", str(root / "trust.json"), "--revoked", str(root / "revoked.json"),
        "--at", str(NOW + 60), "--images", str(root / "images"),
        "--csv", str(csv_path), "--html", str(html_path),
    )  # fmt: skip
    assert out.returncode == 1, out.stderr
    lines = [line.split("\t") for line in out.stdout.splitlines()]
    got = [(cols[0], cols[1]) for cols in lines]
    assert got == [
        ("01-genuine.png", "valid"),
        ("02-tampered.png", "bad_signature"),
        ("03-revoked.jpg", "revoked"),
        ("05-blank.png", "no_code"),
        ("06-broken.png", "unreadable"),
        ("07-two.png", "valid"),
        ("07-two.png", "bad_signature"),
        ("sub/04-photo.jpeg", "valid"),
    ]
    genuine_line = lines[0]
    assert genuine_line[2] == bytes(range(16)).hex() and genuine_line[3] == NAME
    assert lines[1][2:4] == ["-", "-"]  # a forgery's contents are not shown

    text = csv_path.read_text(encoding="utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == 8
    assert list(rows[0]) == ["file", "code", "text_excerpt", "verdict", "serial", "name", "detail"]
    first = rows[0]
    assert first["verdict"] == "valid" and first["name"] == NAME and first["code"] == "1"
    assert first["text_excerpt"].startswith("LIC1:") and first["text_excerpt"].endswith("…")
    assert {r["verdict"] for r in rows if r["file"] == "05-blank.png"} == {"no_code"}

    page = html_path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert NAME in page and "forged or tampered" in page and "sub/04-photo.jpeg" in page


def test_all_genuine_exits_0_and_json_lines(case: dict[str, object], tmp_path: Path) -> None:
    root = case["root"]
    assert isinstance(root, Path)
    _png(str(case["genuine"])).save(tmp_path / "a.png")
    out = fleet(
        "verify", "--trust", str(root / "trust.json"), "--at", str(NOW + 60), "--json",
        "--images", str(tmp_path),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    [doc] = [json.loads(line) for line in out.stdout.splitlines()]
    assert doc["file"] == "a.png" and doc["verdict"] == "valid"
    assert doc["claims"]["lic"]["2"] == NAME


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--images", "/nonexistent-dir"], "no such folder"),
        (["--csv", "x.csv"], "--csv and --html are reports of --images"),
        (["--images", ".", "somefile"], "not both"),
    ],
)
def test_usage_errors_exit_2(case: dict[str, object], extra: list[str], words: str) -> None:
    root = case["root"]
    assert isinstance(root, Path)
    out = fleet("verify", "--trust", str(root / "trust.json"), *extra)
    assert out.returncode == 2 and words in out.stderr


def test_csv_cells_cannot_become_formulas() -> None:
    from fleet.verify_images import Row, csv_report

    row = Row("=cmd.png", 1, '=HYPERLINK("x")', "malformed", "", "", "-bad")
    body = csv_report([row]).splitlines()[1]
    assert body.startswith("'=cmd.png,1,") and "'-bad" in body


def test_an_image_over_the_pixel_limit_is_refused_from_its_header(tmp_path: Path) -> None:
    """The limit is read from the header before anything is decoded: this PNG declares 64 MP
    and holds ~100 bytes, so decoding it would fail on the missing data instead."""
    key = rust_core.SigningKey.generate()
    (tmp_path / "trust.json").write_text(rust_core.trust_list_json([key], ISSUER))
    images = tmp_path / "images"
    images.mkdir()
    (images / "huge.png").write_bytes(declared_png(8_000, 8_000))
    (images / "fits.png").write_bytes(declared_png(7_700, 7_700))
    r = fleet("verify", "--trust", str(tmp_path / "trust.json"), "--images", str(images))
    assert r.returncode == 1, r.stderr
    lines = dict(line.split("\t", 1) for line in r.stdout.splitlines())
    assert lines["huge.png"].startswith("unreadable")
    assert "8000x8000 pixels is over the 60,000,000 pixel limit" in lines["huge.png"]
    assert lines["fits.png"].startswith("unreadable") and "truncated" in lines["fits.png"]


def test_a_jpeg_of_too_many_scans_is_refused_unread() -> None:
    """Each scan of a progressive JPEG is another pass over every pixel: thousands of them in a
    file whose header declares few pixels cost seconds of CPU. The scans are counted from the
    file's markers (stepping over restart markers and 0xFF00 in the scans' data) and an image
    with more than MAX_JPEG_SCANS is refused before anything is decoded, like a huge one."""
    from fleet.qr_images import MAX_JPEG_SCANS, ImageUnreadable, decode_qr_texts, image_size

    at_limit = many_scans_jpeg(64, 48, MAX_JPEG_SCANS)
    assert image_size(at_limit) == (64, 48)
    assert decode_qr_texts(at_limit) == []
    over = many_scans_jpeg(64, 48, MAX_JPEG_SCANS + 1)
    for check in (image_size, decode_qr_texts):
        with pytest.raises(ImageUnreadable, match=f"more than {MAX_JPEG_SCANS} scans"):
            check(over)


def test_a_progressive_jpeg_still_decodes_whatever_its_segments_hold(
    case: dict[str, object],
) -> None:
    """Normal progressive JPEGs have 6-10 scans. Bytes that spell a scan's marker inside another
    segment (a comment here; an embedded thumbnail or ICC profile in a photo) are no scan."""
    from fleet.qr_images import MAX_JPEG_SCANS, decode_qr_texts

    genuine = case["genuine"]
    assert isinstance(genuine, str)
    buf = io.BytesIO()
    _png(genuine).save(buf, "JPEG", progressive=True, quality=90)
    data = buf.getvalue()
    comment = b"\xff\xda" * (MAX_JPEG_SCANS + 50)
    com = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
    data = data[:2] + com + data[2:]  # right after SOI
    assert data.count(b"\xff\xda") > MAX_JPEG_SCANS
    assert decode_qr_texts(data) == [genuine]
