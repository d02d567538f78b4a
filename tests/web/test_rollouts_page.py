"""The rollouts pages in a real browser: an admin follows a rollout's terminals (updated live from
agent events), pauses, resumes and aborts it with the buttons; operators read without controls;
auditors are refused; the new-rollout form shows the API's refusal and creates a rollout.

The server's TUF repository (data_dir/updates) is initialised here and agent 1.3.0 published,
as `fleet updates publish` would; the API reads it on every create."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from fleet.server.updates.repository import init_repository, server_updates_dir
from tests.services.fleet_server import wait_until
from tests.web.conftest import TERMINALS, Fleet, shot, skip_reason

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")

if skip_reason() is None:
    from playwright.sync_api import Browser, Page, expect
else:  # pragma: no cover
    Browser = Page = object  # type: ignore[assignment,misc]

VERSION = "1.3.0"


@pytest.fixture(scope="module")
def published(fleet: Fleet) -> str:
    repo = init_repository(server_updates_dir(fleet.data), fleet.data / "root-keys")
    bundle = fleet.data / "bundle.tar.gz"
    bundle.write_bytes(b"agent 1.3.0" * 100)
    repo.add_target(bundle, VERSION)
    return VERSION


def agent_event(fleet: Fleet, terminal: str, kind: str, **data: str) -> None:
    """Publish one `update_*` event as the terminal's agent would."""
    fleet.seq[terminal] = fleet.seq.get(terminal, 0) + 1
    doc: dict[str, Any] = {
        "v": 1,
        "seq": fleet.seq[terminal],
        "ts": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "agent": "1.2.0",
        "event": kind,
        **data,
    }
    info = fleet.clients[terminal].mqtt.publish(
        f"fleet/v1/t/{terminal}/event", json.dumps(doc), qos=1
    )
    info.wait_for_publish(5)


def state_of(fleet: Fleet, rid: int) -> dict[str, Any]:
    r = fleet.api("GET", f"/api/v1/rollouts/{rid}", "operator")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


@pytest.fixture(scope="module")
def rollout(fleet: Fleet, published: str) -> dict[str, Any]:
    """A rollout to the whole fleet in two waves, its canary downloading."""
    body = {
        "version": published,
        "target": {"sites": sorted(set(TERMINALS.values()))},
        "waves": [1, "100%"],
        "max_failures": 2,
        "override_window": True,
    }
    r = fleet.api("POST", "/api/v1/rollouts", json=body)
    assert r.status_code == 201, r.text
    plan: dict[str, Any] = r.json()
    canary = plan["waves"][0]["terminals"][0]["id"]
    agent_event(fleet, canary, "update_downloading")
    wait_until(
        lambda: state_of(fleet, plan["id"])["waves"][0]["terminals"][0]["state"] == "downloading",
        10,
        "the canary's download",
    )
    return plan


def test_admin_follows_and_controls_a_rollout(
    admin: Page, fleet: Fleet, rollout: dict[str, Any]
) -> None:
    page, rid = admin, rollout["id"]
    canary = rollout["waves"][0]["terminals"][0]["id"]
    others = [t["id"] for t in rollout["waves"][1]["terminals"]]
    page.goto("/rollouts")
    expect(page.locator("header nav a.current")).to_have_text("发布")
    row = page.locator(f'#rollouts tr[data-rollout="{rid}"]')
    expect(row.locator(".version")).to_have_text(VERSION)
    expect(row.locator(".rstate")).to_have_text("进行中")
    expect(row.locator(".progress")).to_have_text("第 1/2 批")
    expect(row.locator('[data-ucount="downloading"]')).to_have_text("下载中 1")
    expect(row.locator('[data-ucount="pending"]')).to_have_text("等待 2")
    shot(page, "rollouts-list")

    row.locator("a").click()
    expect(page.locator("h1")).to_contain_text(f"#{rid}")
    expect(page.locator("#live")).to_have_class("live on")
    page.evaluate("window.__noReload = true")
    waves = page.locator("section.wave")
    expect(waves).to_have_count(2)
    expect(waves.nth(0).locator(f'tr[data-terminal="{canary}"] .ustate')).to_have_text("下载中")
    expect(waves.nth(0).locator(".wave-state")).to_have_text("已开始")
    expect(waves.nth(1).locator(".wave-state")).to_have_text("未开始")
    for t in others:
        expect(waves.nth(1).locator(f'tr[data-terminal="{t}"] .ustate')).to_have_text("等待")
    expect(page.locator("#rollout-max-failures")).to_have_text("2")
    expect(page.locator("#ro-resume")).to_be_disabled()

    page.click("#ro-pause")
    expect(page.locator("#rollout-state")).to_have_text("已暂停")
    assert state_of(fleet, rid)["state"] == "paused"
    expect(page.locator("#ro-pause")).to_be_disabled()

    # The canary fails: the page follows without a reload, with the agent's reason.
    agent_event(fleet, canary, "update_failed", version=VERSION, reason="bundle hash mismatch")
    cell = page.locator(f'tr[data-terminal="{canary}"]')
    expect(cell.locator(".ustate")).to_have_text("失败")
    expect(cell.locator(".reason")).to_have_text("bundle hash mismatch")
    expect(page.locator("#rollout-failures")).to_have_text("1 / 1")
    assert page.evaluate("window.__noReload") is True
    shot(page, "rollout-detail")

    page.click("#ro-resume")  # accepts the failed canary: the second wave starts
    expect(page.locator("#rollout-progress")).to_have_text("第 2/2 批")
    expect(waves.nth(1).locator(".wave-state")).to_have_text("已开始")
    assert state_of(fleet, rid)["state"] == "running"

    dialogs: list[str] = []

    def answer(d: Any) -> None:
        dialogs.append(d.message)
        d.dismiss() if len(dialogs) == 1 else d.accept()

    page.on("dialog", answer)
    page.click("#ro-abort")  # dismissed: nothing happens
    expect(page.locator("#rollout-state")).to_have_text("进行中")
    page.click("#ro-abort")
    expect(page.locator("#rollout-state")).to_have_text("已中止")
    assert f"#{rid}" in dialogs[0] and len(dialogs) == 2
    assert state_of(fleet, rid)["state"] == "aborted"
    expect(page.locator("button.rollout-action:enabled")).to_have_count(0)

    page.goto(f"/rollouts/{rid}?lang=en")
    expect(page.locator("#rollout-state")).to_have_text("aborted")
    expect(page.locator(f'tr[data-terminal="{canary}"] .ustate')).to_have_text("failed")
    shot(page, "rollout-detail-en")


def test_operator_reads_without_controls(
    operator: Page, fleet: Fleet, rollout: dict[str, Any]
) -> None:
    page = operator
    page.goto("/rollouts")
    expect(page.locator(f'#rollouts tr[data-rollout="{rollout["id"]}"]')).to_have_count(1)
    expect(page.locator("#rollout-form")).to_have_count(0)
    page.goto(f"/rollouts/{rollout['id']}")
    expect(page.locator("section.wave")).to_have_count(2)
    expect(page.locator("button.rollout-action")).to_have_count(0)
    expect(page.locator("#rollout-controls")).to_have_count(0)
    assert page.request.get("/rollouts/99999").status == 404


def test_auditor_is_refused(auditor: Page, fleet: Fleet, rollout: dict[str, Any]) -> None:
    page = auditor
    expect(page.locator("header nav a", has_text="发布")).to_have_count(0)
    for path in ("/rollouts", f"/rollouts/{rollout['id']}"):
        response = page.goto(path)
        assert response is not None and response.status == 403, path
        expect(page.locator("#message")).to_have_text("您的角色无权查看此页面。")


def test_new_rollout_form(admin: Page, fleet: Fleet, rollout: dict[str, Any]) -> None:
    page = admin
    page.goto("/rollouts?lang=en")
    expect(page.locator("h1")).to_contain_text("Agent rollouts")
    page.fill("#ro-version", "9.9.9")
    page.fill("#ro-sites", "WH-HALL")
    page.click("#ro-submit")
    result = page.locator("#ro-result")
    expect(result).to_have_text(  # a 422 names its field: `version`
        "Could not create the rollout: version: agent version 9.9.9 is not published in the "
        "update repository"
    )
    shot(page, "rollout-new-error")

    page.fill("#ro-version", "latest")  # refused by the API's schema: the field is named
    page.click("#ro-submit")
    expect(result).to_contain_text("version")

    # A good one: to one terminal, outside the window; the page moves to its detail.
    page.fill("#ro-version", VERSION)
    page.fill("#ro-sites", "")
    page.fill("#ro-terminals", "YL-ST-01")
    page.fill("#ro-waves", "1")
    page.fill("#ro-max-failures", "0")
    page.select_option("#ro-failure-action", "abort")
    page.check("#ro-override")
    page.click("#ro-submit")
    page.wait_for_url("**/rollouts/*")
    rid = int(page.url.rsplit("/", 1)[1])
    got = state_of(fleet, rid)
    assert got["target"]["terminals"] == ["YL-ST-01"] and got["waves_spec"] == [1]
    assert got["max_failures"] == 0 and got["failure_action"] == "abort"
    assert got["override_window"] is True and got["state"] == "running"
    expect(page.locator('tr[data-terminal="YL-ST-01"] .ustate')).to_have_text("pending")
