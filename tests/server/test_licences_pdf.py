"""The printable licence: an A4 PDF with the Chinese text extractable and a QR code that decodes
to the signed text once rasterised; and printed through the agent's IPP driver to a real
IPP Everywhere printer (CUPS's ippeveprinter)."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zxingcpp
from PIL import Image
from pypdf import PdfReader

import rust_core
from agent.drivers.base import DriverError
from agent.drivers.ipp import IppPrinter
from fleet.demo import sample_claims
from fleet.licence_claims import claims_to_json
from fleet.server.licences.pdf import FontMissing, find_font, render_licence_pdf
from tests.server.api_support import NOW, Api
from tests.server.licence_support import AUTHORITY, give_issuer, issue
from tests.services import ippeveprinter

pytest_plugins = ["tests.server.api_fixtures"]

DPI = 200
MM_PER_INCH = 25.4


def rasterise(pdf: bytes, tmp: Path) -> Image.Image:
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm (poppler-utils) is not installed")
    (tmp / "doc.pdf").write_bytes(pdf)
    subprocess.run(
        ["pdftoppm", "-r", str(DPI), "-gray", "-png", "-singlefile", str(tmp / "doc.pdf"),
         str(tmp / "page")],
        check=True,
        timeout=60,
    )  # fmt: skip
    return Image.open(tmp / "page.png")


async def test_pdf_from_the_api(api: Api, tmp_path: Path) -> None:
    issuer = give_issuer(api)
    out = await issue(api)
    r = await api.client.get(f"/api/v1/licences/{out['serial']}/pdf", headers=api.auth())
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/pdf"
    assert f'filename="licence-{out["serial"]}.pdf"' in r.headers["content-disposition"]
    pdf = r.content
    reader = PdfReader(io.BytesIO(pdf))
    [page] = reader.pages
    width_mm = float(page.mediabox.width) / 72 * MM_PER_INCH
    height_mm = float(page.mediabox.height) / 72 * MM_PER_INCH
    assert (round(width_mm), round(height_mm)) == (210, 297)
    text = page.extract_text()
    for words in (
        "营业执照",
        "统一社会信用代码",
        "92510107MA6CQ8T15F",
        "名称",
        "成都市武侯区蓉香小吃店",
        "类型",
        "个体工商户",
        "经营者",
        "王秀英",
        "经营场所",
        "四川省成都市武侯区玉林北路12号附3号",
        "组成形式",
        "注册日期",
        "2024年03月18日",
        "经营范围",
        "小吃服务；饮料及冷饮服务",
        AUTHORITY,
        f"{NOW.year}年{NOW.month:02d}月{NOW.day:02d}日",
        out["serial"],
    ):
        assert words in text, words
    # The Chinese font is embedded as a subset (a "ABCDEF+" tag on its name), not referenced.
    resources: Any = page["/Resources"]
    font_dict: Any = resources["/Font"]
    fonts = [f.get_object() for f in font_dict.values()]
    assert any(str(f["/BaseFont"])[7:8] == "+" for f in fonts), fonts

    image = rasterise(pdf, tmp_path)
    [code] = zxingcpp.read_barcodes(image)
    assert code.text == out["text"]
    pos = code.position
    side_px = max(abs(pos.top_right.x - pos.top_left.x), abs(pos.bottom_left.y - pos.top_left.y))
    assert side_px / DPI * MM_PER_INCH >= 30  # scannable from a hand's length (quiet zone aside)
    store = rust_core.TrustStore.from_keys([issuer.key], issuer.name)
    assert store.verify(code.text, at=int(NOW.timestamp())).verdict == "valid"

    r = await api.client.get("/api/v1/licences/" + "0" * 32 + "/pdf", headers=api.auth())
    assert r.status_code == 404
    r = await api.client.get(f"/api/v1/licences/{out['serial']}/pdf", headers=api.auth("auditor"))
    assert r.status_code == 403


def test_a_company_is_worded_as_one(tmp_path: Path) -> None:
    claims = sample_claims(1_767_225_600, bytes(16))
    claims["lic"].update({3: "有限责任公司", 6: "100万元人民币"})
    key = rust_core.SigningKey.generate()
    pdf = render_licence_pdf(key.sign_licence(claims), claims_to_json(claims), authority_name="X")
    text = PdfReader(io.BytesIO(pdf)).pages[0].extract_text()
    assert (
        "法定代表人" in text and "住所" in text and "注册资本" in text and "100万元人民币" in text
    )
    assert "经营者" not in text and "组成形式" not in text


def test_missing_font_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FontMissing, match="does not exist"):
        find_font(tmp_path / "none.ttf")


@pytest.fixture
def printer() -> Iterator[ippeveprinter.IppEvePrinter]:
    if not ippeveprinter.available():
        pytest.skip("ippeveprinter or dbus-daemon is not installed")
    p = ippeveprinter.IppEvePrinter().start()
    p.set_paper(main=200)
    p.set_supplies(toner=80)
    yield p
    p.close()


def _spooled(p: ippeveprinter.IppEvePrinter) -> list[Path]:
    return sorted(f for f in p.spool.rglob("*") if f.is_file() and f.suffix != ".prn")


def test_agent_prints_the_licence_pdf(printer: ippeveprinter.IppEvePrinter) -> None:
    key = rust_core.SigningKey.generate()
    claims = sample_claims(1_767_225_600, os.urandom(16))
    pdf = render_licence_pdf(key.sign_licence(claims), claims_to_json(claims), authority_name="X")
    driver = IppPrinter(printer.uri, timeout_s=5.0)
    detail = driver.print_licence(pdf, claims["cti"].hex())
    assert detail.endswith("completed (application/pdf)")
    [doc] = _spooled(printer)
    assert doc.read_bytes() == pdf
    # Out of paper: refused before anything is sent.
    printer.set_paper(main=0)
    with pytest.raises(DriverError, match="stopped"):
        driver.print_licence(pdf, "x")
    assert len(_spooled(printer)) == 1
