"""Fleet simulator parts that need no broker: sites, credentials, and one terminal's behaviour."""

from __future__ import annotations

import base64
import hashlib
import json
import resource
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from agent.report import TERMINAL_ID
from agent.sim import credentials
from agent.sim.cli import UsageError, broker_address, main, raise_fd_limit
from agent.sim.sites import layout, sites
from agent.sim.terminal import Behaviour, Message, SimTerminal


class FakeClock:
    def __init__(self, t: float = 5000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- sites ---------------------------------------------------------------------------------------


def test_layout_gives_n_valid_unique_ids_deterministically() -> None:
    specs = layout(5000)
    ids = [s.terminal_id for s in specs]
    assert len(ids) == len(set(ids)) == 5000
    assert all(TERMINAL_ID.match(i) for i in ids)
    assert [s.terminal_id for s in layout(5000)] == ids
    assert layout(0) == []


def test_layout_spreads_over_hall_street_centres_and_communities() -> None:
    specs = layout(100)
    ids = {s.terminal_id for s in specs}
    assert {"WH-HALL-01", "WH-JD-YL-01", "WH-SQ-YLBL-01"} <= ids
    per_site = Counter(s.site.id for s in specs)
    kinds = {s.site.id: s.site.kind for s in specs}
    hall = per_site["WH-HALL"]
    assert all(hall >= n for n in per_site.values())
    assert {kinds[k] for k in per_site} == {"hall", "street_centre", "community"}
    assert (
        next(s.site for s in specs if s.terminal_id == "WH-JD-YL-01").name == "玉林街道便民服务中心"
    )


def test_site_ids_are_unique() -> None:
    ids = [s.id for s in sites()]
    assert len(ids) == len(set(ids))


# -- credentials ---------------------------------------------------------------------------------


def test_mosquitto_hash_is_pbkdf2_sha512_like_mosquitto_passwd() -> None:
    line = credentials.mosquitto_hash("secret", salt=b"0123456789ab")
    _, kind, iterations, salt, digest = line.split("$")
    assert (kind, iterations) == ("7", "101")
    expected = hashlib.pbkdf2_hmac("sha512", b"secret", b"0123456789ab", 101)
    assert base64.b64decode(salt) == b"0123456789ab"
    assert base64.b64decode(digest) == expected


def test_credentials_files_round_trip(tmp_path: Path) -> None:
    users = credentials.random_passwords(["A-1", "B-2"])
    credentials.write_credentials(tmp_path / "creds", users)
    assert (tmp_path / "creds").stat().st_mode & 0o777 == 0o600
    assert credentials.read_credentials(tmp_path / "creds") == users
    credentials.write_passwd(tmp_path / "passwd", users)
    lines = (tmp_path / "passwd").read_text().splitlines()
    assert [x.split(":")[0] for x in lines] == ["A-1", "B-2"]
    assert all("secret" not in x and users["A-1"] not in x for x in lines)


def test_template_must_name_the_terminal() -> None:
    assert credentials.from_template("pw-{id}", ["X"]) == {"X": "pw-X"}
    with pytest.raises(ValueError):
        credentials.from_template("same-for-all", ["X"])


def test_make_passwd_command(tmp_path: Path) -> None:
    out, creds = tmp_path / "passwd", tmp_path / "creds"
    rc = main(
        [
            *("make-passwd", "--terminals", "30", "--out", str(out)),
            *("--credentials", str(creds), "--user", "fleet-server:s3cret"),
        ]
    )
    assert rc == 0
    users = [line.split(":")[0] for line in out.read_text().splitlines()]
    assert users == [s.terminal_id for s in layout(30)] + ["fleet-server"]
    assert set(credentials.read_credentials(creds)) == set(users) - {"fleet-server"}


def test_usage_errors() -> None:
    assert broker_address("mqtt://127.0.0.1:1884") == ("127.0.0.1", 1884)
    with pytest.raises(UsageError):
        broker_address("mqtts://127.0.0.1:8883")
    assert main(["--terminals", "3", "--broker", "http://x", "--password-template", "{id}"]) == 2


def test_fd_limit_is_raised_within_the_hard_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        want = min(hard, soft + 10)
        assert raise_fd_limit(want) >= want
        assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] >= want
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# -- one terminal --------------------------------------------------------------------------------


def terminal(clock: FakeClock, **kw: Any) -> SimTerminal:
    spec = layout(1)[0]
    return SimTerminal(spec, Behaviour(**kw), seed=11, clock=clock)


def decode(messages: list[Message], kind: str) -> list[dict[str, Any]]:
    return [json.loads(m.payload) for m in messages if m.topic.endswith("/" + kind)]


def test_presence_carries_the_site_and_is_retained() -> None:
    t = terminal(FakeClock())
    m = t.presence(online=True)
    body = json.loads(m.payload)
    assert m.retain and m.topic == "fleet/v1/t/WH-HALL-01/presence"
    assert body["online"] is True and body["v"] == 1
    assert body["site"] == {
        "id": "WH-HALL",
        "name": "武侯区政务服务中心政务服务大厅",
        "kind": "hall",
        "street": None,
    }


def test_periodic_reports_with_consecutive_seq() -> None:
    clock = FakeClock()
    t = terminal(clock, status_interval_s=10.0, prints_per_hour=0.0)
    now = 100.0
    t.on_connect(now)
    assert t.next_report is not None and now <= t.next_report < now + 10.0
    statuses: list[dict[str, Any]] = []
    for step in range(1, 61):  # a minute in one-second polls
        statuses += decode(t.tick(now + step), "status")
    assert [s["seq"] for s in statuses] == list(range(1, 7))
    s = statuses[0]
    assert s["printer"]["driver"] == "sim" and s["printer"]["paper"]["estimated"] is False
    assert s["reader"]["state"] == "ok" and set(s["host"]) == {"uptime_s", "disk_free_mb"}


def test_a_stall_skips_ahead_instead_of_bursting() -> None:
    t = terminal(FakeClock(), status_interval_s=10.0, prints_per_hour=0.0)
    t.on_connect(0.0)
    assert len(decode(t.tick(1000.0), "status")) == 1
    assert t.next_report == 1010.0


def test_change_is_reported_at_once_and_staff_clear_the_jam() -> None:
    clock = FakeClock()
    t = terminal(clock, status_interval_s=3600.0, prints_per_hour=0.0, jam_rate=1.0)
    t.on_connect(0.0)
    t.next_report = 10_000.0  # keep periodic reports out of the way
    assert t.tick(1.0) == []
    t.printer.print_licence()  # jams
    out = t.tick(2.0)
    [status] = decode(out, "status")
    assert status["printer"]["state"] == "stopped" and status["printer"]["reasons"] == ["media-jam"]
    [err] = decode(out, "event")
    assert (err["event"], err["reason"]) == ("device_error", "media-jam")
    assert t.tick(3.0) == []  # no change, no report
    clock.t += 1800.0  # staff come within half an hour
    [status] = decode(t.tick(4.0), "status")
    # Status reports and events share one seq: the report after the jam's status and event is 3.
    assert sorted(m["seq"] for m in decode(out, "status") + decode(out, "event")) == [1, 2]
    assert status["printer"]["state"] == "idle" and status["seq"] == 3


def test_prints_become_events_and_an_empty_tray_is_refilled() -> None:
    clock = FakeClock()
    t = terminal(clock, capacity=10, prints_per_hour=3600.0, jam_rate=0.0)
    t.on_connect(0.0)
    t.next_report = 10_000.0
    assert decode(t.tick(0.5), "status") == []
    clock.t += 3600.0  # far more citizens than sheets
    out = t.tick(1.0)
    prints = [e for e in decode(out, "event") if e["event"] == "print_completed"]
    assert prints and all(len(e["serial"]) == 32 for e in prints)
    [status] = decode(out, "status")
    # One seq across events and the status report, counting up by one from 1.
    all_seqs = sorted(m["seq"] for m in [*decode(out, "event"), status])
    assert all_seqs == list(range(1, len(all_seqs) + 1))
    assert status["printer"]["reasons"] == ["media-empty"]
    clock.t += 3600.0  # the empty tray is refilled within the hour
    out = t.tick(2.0)
    refills = [e for e in decode(out, "event") if e["event"] == "paper_refilled"]
    assert refills and refills[0]["capacity"] == 10
