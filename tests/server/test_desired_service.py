"""The desired-state service on both databases: versions, history, rollback, bulk results,
templates, publishing failures."""

from __future__ import annotations

import asyncio
import json

import pytest
from tortoise.exceptions import IntegrityError

from agent.desired.document import MAX_INLINE_TEMPLATE_BYTES, open_envelope
from fleet.server.db.models import (
    AssignmentScope,
    DesiredDoc,
    LayerScope,
    Site,
    TemplateAssignment,
    Terminal,
)
from fleet.server.desired.service import TemplateError, content_of
from tests.server.desired_support import KEY, NOW, FakePublisher, seed, service

TOPIC = "fleet/v1/t/{}/desired"
FORM = {"schema": {"type": "object", "properties": {"name": {"type": "string"}}}, "layout": []}


async def _latest(tid: str) -> DesiredDoc:
    doc = await DesiredDoc.filter(terminal_id=tid).order_by("-version").first()
    assert doc is not None
    return doc


async def _versions(tid: str) -> list[int]:
    return [d.version for d in await DesiredDoc.filter(terminal_id=tid).order_by("version")]


async def test_a_version_only_when_the_content_changes(db: str) -> None:
    await seed()
    pub = FakePublisher()
    svc = service(pub)
    first = await svc.recompute()
    assert [(o.terminal, o.result, o.version, o.published) for o in first] == [
        ("T1", "new", 1, True),
        ("T2", "new", 1, True),
        ("T3", "new", 1, True),
    ]
    again = await svc.recompute()
    assert {o.result for o in again} == {"unchanged"} and len(pub.sent) == 3
    out = await svc.set_layer(LayerScope.SITE, "S1", {"paper": {"low_pct": 30}}, "admin")
    assert [(o.terminal, o.result, o.version) for o in out] == [("T1", "new", 2), ("T2", "new", 2)]
    assert await _versions("T3") == [1]
    # The same layer again changes no document.
    out = await svc.set_layer(LayerScope.SITE, "S1", {"paper": {"low_pct": 30}}, "admin")
    assert {o.result for o in out} == {"unchanged"}
    opened = open_envelope(pub.last(TOPIC.format("T1")), KEY.verifying_key(), "T1")
    cfg = opened.document["config"]
    # defaults <- model (capacity 1000, low 15) <- site (low 30)
    assert cfg["paper"] == {"capacity": 1000, "low_pct": 30}
    assert cfg["status_interval_s"] == 30
    assert opened.version == 2 and opened.document["model"] == "kx-a4-ipp"
    assert all(retain for _, _, retain in pub.sent)
    doc = await DesiredDoc.get(terminal_id="T1", version=2)
    assert doc.hash == opened.hash and doc.payload.encode() == opened.payload
    assert doc.published_at == NOW


async def test_layers_stack_terminal_over_site_over_model(db: str) -> None:
    await seed()
    svc = service()
    await svc.set_layer(LayerScope.MODEL, "kx-a4-ipp", {"kiosk": {"locale": "en-GB"}}, "a")
    await svc.set_layer(LayerScope.SITE, "S1", {"kiosk": {"idle_timeout_s": 60}}, "a")
    await svc.set_layer(LayerScope.TERMINAL, "T1", {"kiosk": {"locale": "zh-HK"}}, "a")
    await svc.set_layer(LayerScope.DEFAULT, "", {"status_interval_s": 60}, "a")
    t1 = content_of((await _latest("T1")).payload)
    t3 = content_of((await _latest("T3")).payload)
    assert t1["config"]["status_interval_s"] == 60 == t3["config"]["status_interval_s"]


async def test_concurrent_changes_never_share_a_version(db: str) -> None:
    await seed({"S1": ["T1"]})
    svc = service()
    changes = [
        svc.set_layer(LayerScope.TERMINAL, "T1", {"status_interval_s": 10 + i}, f"admin{i}")
        for i in range(8)
    ]
    changes += [
        svc.set_layer(LayerScope.SITE, "S1", {"debounce_s": float(i)}, "x") for i in range(4)
    ]
    await asyncio.gather(*changes)
    versions = await _versions("T1")
    assert versions == list(range(1, len(versions) + 1)) and len(versions) == 12


async def test_the_database_refuses_a_second_doc_with_the_same_version(db: str) -> None:
    await seed({"S1": ["T1"]})
    await service().recompute()
    row = await DesiredDoc.get(terminal_id="T1", version=1)
    with pytest.raises(IntegrityError):
        await DesiredDoc.create(
            terminal_id="T1",
            version=1,
            hash=row.hash,
            payload=row.payload,
            envelope=row.envelope,
            created_at=NOW,
        )


async def test_rollback_publishes_old_content_as_a_new_version(db: str) -> None:
    await seed({"S1": ["T1"]})
    pub = FakePublisher()
    svc = service(pub)
    await svc.recompute()
    await svc.set_layer(LayerScope.TERMINAL, "T1", {"paper": {"low_pct": 40}}, "a")
    out = await svc.rollback("T1", 1)
    assert out is not None and (out.result, out.version) == ("new", 3)
    v1, v3 = [await DesiredDoc.get(terminal_id="T1", version=v) for v in (1, 3)]
    assert content_of(v1.payload) == content_of(v3.payload) and v3.hash != v1.hash
    assert v3.reason == "rollback to 1"
    opened = open_envelope(pub.last(TOPIC.format("T1")), KEY.verifying_key(), "T1")
    assert opened.version == 3 and opened.document["config"]["paper"]["low_pct"] == 15
    assert await svc.rollback("T1", 99) is None
    # Rolling back to what is current already changes nothing.
    again = await svc.rollback("T1", 1)
    assert again is not None and (again.result, again.version) == ("unchanged", 3)


async def test_bulk_change_reports_each_terminal(db: str) -> None:
    await seed({"S1": ["T1", "T2", "T3"]})
    svc = service()
    await svc.recompute()
    await svc.put_template("gtgsh-setup", FORM, "admin")
    # A pin to a version that does not exist (the API refuses it; the service must survive it).
    await TemplateAssignment.create(
        template_id="gtgsh-setup", scope=AssignmentScope.TERMINAL, key="T2", version=9
    )
    out = await svc.set_layer(LayerScope.SITE, "S1", {"kiosk": {"notice": "closed Monday"}}, "a")
    by = {o.terminal: o for o in out}
    assert (by["T1"].result, by["T1"].version) == ("new", 2)
    assert by["T2"].result == "error" and "version 9" in (by["T2"].error or "")
    assert (by["T3"].result, by["T3"].version) == ("new", 2)
    assert await _versions("T2") == [1]


async def test_templates_inline_by_url_and_following_the_latest(db: str) -> None:
    await seed({"S1": ["T1", "T2"]})
    svc = service()
    row, created, out = await svc.put_template("gtgsh-setup", FORM, "admin")
    assert (row.version, created, out) == (1, True, [])
    _, created, _ = await svc.put_template("gtgsh-setup", FORM, "admin")
    assert not created  # the same content is not a new version
    out = await svc.set_assignments("gtgsh-setup", {"S1": None}, {})
    assert {(o.terminal, o.result) for o in out} == {("T1", "new"), ("T2", "new")}
    big = {**FORM, "layout": ["x" * (MAX_INLINE_TEMPLATE_BYTES + 10)]}
    row, created, out = await svc.put_template("gtgsh-setup", big, "admin")
    assert row.version == 2 and {o.result for o in out} == {"new"}
    latest = await DesiredDoc.filter(terminal_id="T1").order_by("-version").first()
    assert latest is not None
    (entry,) = json.loads(latest.payload)["templates"]
    assert entry["version"] == 2 and entry["url"] == f"/api/v1/templates/blobs/{row.sha256}"
    assert "content" not in entry and entry["size"] == row.size
    # T2 pinned to version 1: inline content, and a new template version leaves it alone.
    await svc.set_assignments("gtgsh-setup", {"S1": None}, {"T2": 1})
    t2 = await DesiredDoc.filter(terminal_id="T2").order_by("-version").first()
    assert t2 is not None and json.loads(t2.payload)["templates"][0]["content"] == FORM
    with pytest.raises(TemplateError, match="layout"):
        await svc.put_template("bad", {"schema": {"type": "object"}}, "admin")


async def test_a_failed_publish_keeps_the_document_and_republishes_later(db: str) -> None:
    await seed({"S1": ["T1", "T2"]})
    pub = FakePublisher(down=True)
    svc = service(pub)
    out = await svc.recompute()
    assert {(o.result, o.published) for o in out} == {("new", False)}
    assert all(o.error and "not connected" in o.error for o in out)
    assert await DesiredDoc.filter(published_at__isnull=True).count() == 2
    pub.down = False
    assert await svc.republish_latest() == 2
    assert sorted(t for t, _, _ in pub.sent) == [TOPIC.format("T1"), TOPIC.format("T2")]
    assert await DesiredDoc.filter(published_at__isnull=True).count() == 0
    # An unchanged recompute of an unpublished document publishes it.
    pub.down = True
    await svc.set_layer(LayerScope.TERMINAL, "T1", {"debounce_s": 1.0}, "a")
    pub.down = False
    (again,) = await svc.recompute(["T1"])
    assert (again.result, again.version, again.published) == ("unchanged", 2, True)


async def test_a_terminal_registered_later_gets_its_first_document(db: str) -> None:
    await seed()
    pub = FakePublisher()
    svc = service(pub)
    await svc.recompute()
    assert await svc.recompute_new_terminals() == []  # everyone has one
    site = await Site.get(id="S2")
    await Terminal.create(id="T9", site=site, model="kx-a4-ipp", mqtt_username="T9")
    out = await svc.recompute_new_terminals()
    assert [(o.terminal, o.result, o.version) for o in out] == [("T9", "new", 1)]
    # The first three were published concurrently: their order is not fixed; T9 came last.
    topics = [t for t, _, _ in pub.sent]
    assert sorted(topics[:3]) == [TOPIC.format(t) for t in ("T1", "T2", "T3")]
    assert topics[3:] == [TOPIC.format("T9")]
