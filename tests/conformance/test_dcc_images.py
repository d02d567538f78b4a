"""The EU DCC suite's QR images (`2DCODE`: base64 PNG) decoded with zxing-cpp, the decoder the
auditor's image verification uses (`fleet verify --images`, POST /api/v1/verify/images).

EXPECTEDPICTUREDECODE true: the image decodes to exactly one QR code whose text is the case's
PREFIX. false: decoding fails or gives something else. Cases without the flag are not judged
(ES 501-503 carry PNGs of other texts; see test_dcc_suite.py). LV 1-3 spell the field
`_2DCODE`; it is the same image, so they are judged too.
"""

from __future__ import annotations

import base64
from collections import Counter

import pytest

from fleet.qr_images import ImageUnreadable, decode_qr_texts
from tests.conformance.conftest import VECTORS, DccCase, dcc_cases

#: Counts when this was written (dgc-testdata as in shared/): cases with an image and the flag.
EXPECTED_TRUE = 493
EXPECTED_FALSE = 1


def _image(case: DccCase) -> bytes | None:
    data = case.data.get("2DCODE", case.data.get("_2DCODE"))
    return base64.b64decode(data) if isinstance(data, str) else None


def _flag(case: DccCase) -> bool | None:
    value = case.data.get("EXPECTEDRESULTS", {}).get("EXPECTEDPICTUREDECODE")
    return value if isinstance(value, bool) else None


def judged_cases() -> list[DccCase]:
    if not VECTORS.is_dir():
        return []
    return [c for _, c in dcc_cases() if _image(c) is not None and _flag(c) is not None]


def _decode(case: DccCase) -> list[str] | None:
    image = _image(case)
    assert image is not None
    try:
        return decode_qr_texts(image)
    except ImageUnreadable:
        return None


def _holds(case: DccCase) -> bool:
    decoded = _decode(case)
    matches = decoded == [case.data.get("PREFIX")]
    return matches if _flag(case) else not matches


@pytest.mark.parametrize("case", judged_cases(), ids=lambda c: c.id)
def test_picture_decode(case: DccCase) -> None:
    decoded = _decode(case)
    if _flag(case):
        assert decoded == [case.data["PREFIX"]]
    else:
        assert decoded != [case.data.get("PREFIX")]


def test_summary() -> None:
    """Run with -s to see the counts."""
    cases = judged_cases()
    if not cases:
        pytest.skip(f"conformance vectors not found at {VECTORS}")
    counts = Counter((_flag(c), _holds(c)) for c in cases)
    print(
        f"\nDCC 2DCODE images: {len(cases)} judged; EXPECTEDPICTUREDECODE true held "
        f"{counts[(True, True)]}/{counts[(True, True)] + counts[(True, False)]}, false held "
        f"{counts[(False, True)]}/{counts[(False, True)] + counts[(False, False)]}"
    )
    assert counts == {(True, True): EXPECTED_TRUE, (False, True): EXPECTED_FALSE}
