"""The session cookie and CSRF token (no browser): signed, bound, expiring, and the SVG chart
escapes what it draws."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fleet.server.api.auth import Principal
from fleet.server.db.models import Role
from fleet.server.web import session as s
from fleet.server.web.charts import paper_chart
from fleet.server.web.i18n import CATALOGUES, VERDICT_WORDS, pick_lang

SECRET = "a-test-secret-of-enough-length"
WHO = Principal(7, "alice", Role.OPERATOR)


def test_round_trip_and_tampering() -> None:
    value = s.sign(SECRET, WHO, now=1000)
    got = s.unsign(SECRET, value, now=1001)
    assert got is not None and got.principal == WHO
    body, mac = value.split(".")
    forged_body = s._b64(s._unb64(body).replace(b"operator", b"admin\x20\x20\x20"))
    assert s.unsign(SECRET, f"{forged_body}.{mac}", now=1001) is None
    assert s.unsign("another-secret-entirely!", value, now=1001) is None
    assert s.unsign(SECRET, value, now=1000 + s.SESSION_TTL_S) is None  # expired
    for junk in ("", "x", "a.b.c", "!!.??", None):
        assert s.unsign(SECRET, junk) is None


def test_csrf_is_bound_to_the_session() -> None:
    one = s.unsign(SECRET, s.sign(SECRET, WHO))
    two = s.unsign(SECRET, s.sign(SECRET, WHO))
    assert one is not None and two is not None
    token = s.csrf_token(SECRET, one)
    assert s.csrf_ok(SECRET, one, token)
    assert not s.csrf_ok(SECRET, two, token)
    assert not s.csrf_ok(SECRET, one, None)
    assert not s.csrf_ok(SECRET, one, "")


def test_catalogues_agree_and_cover_every_verdict() -> None:
    import rust_core

    assert set(CATALOGUES["zh-CN"]) == set(CATALOGUES["en"])
    assert set(VERDICT_WORDS) == set(rust_core.VERDICTS)
    # Templates write t.key: a key named like a dict method (clear, items...) would show the method.
    assert not [k for k in CATALOGUES["en"] if hasattr(dict, k)]
    assert pick_lang(None, None) == "zh-CN"
    assert pick_lang("en", "zh-CN") == "en"
    assert pick_lang("xx", "en") == "en"


def test_chart_escapes_and_breaks_on_unknown() -> None:
    end = datetime(2026, 11, 27, 12, tzinfo=UTC)
    start = end - timedelta(hours=4)
    points = [(start + timedelta(hours=h), p) for h, p in ((0, 90), (1, 60), (2, None), (3, 30))]
    svg = str(paper_chart(points, start, end, UTC, 20, "<script>alert(1)</script>"))
    assert "<script>" not in svg and "&lt;script&gt;" in svg
    assert svg.count("<polyline") == 1 and svg.count("<circle") == 1
