"""Agent rollout benchmark: a new agent version reaching 1,000 simulated terminals in four waves.

    .venv/bin/python bench/bench_rollout.py                   # 1,000 terminals, 3 rollouts
    .venv/bin/python bench/bench_rollout.py --terminals 200 --repeat 1

The whole product as `make run` starts it (`fleet demo-fleet`: `fleet serve` with its own
Mosquitto and SQLite, its TUF repository and demo release; `fleet-sim` with N terminals that
simulate self-updates, agent/sim/update.py: `update_downloading`, `update_installing`, then
`update_succeeded` 1-2 s after the document). Each rollout is to a new published version (the
demo's release first, then the next patch versions, built and published here), over every site,
with waves [1, "10%", "50%", "100%"] and `override_window`. Timed from just before the
`POST /api/v1/rollouts`:
- each wave's completion: the engine starts the next wave in the step that sees the last result
  of a wave, so it is the next wave's `started_at`, and the last wave's is the rollout's
  `finished_at` (the server's own timestamps, from `GET /api/v1/rollouts/{id}` at the end),
- the rollout's `completed` state (`finished_at`; the state is polled twice a second),
- the event ingest: the `update_*` events of the version seen on the broker (a subscriber with
  the server's credentials) and stored in the server's database (`terminal_event`), and when the
  last one was stored.
The floor no rollout can beat is the terminals' own simulated update time, wave after wave: per
wave the longest from a terminal's `update_downloading` to its outcome as seen on the broker;
`ratio` = total / the sum of those, i.e. what the server adds (documents, signing, ingest, wave
logic). Medians over `--repeat` rollouts. FAIL (exit 1) when a rollout does not complete within
the timeout or a terminal's update does not succeed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sqlite3
import statistics
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agent.sim.sites import layout  # noqa: E402
from agent.version import agent_version  # noqa: E402
from bench.bench_desired import (  # noqa: E402
    drift,
    http,
    running_demo,
    server_subscriber,
    wait_for,
)
from fleet.demo_fleet import next_patch  # noqa: E402
from fleet.server.updates.bundle import build_bundle  # noqa: E402
from fleet.server.updates.repository import UpdateRepository, server_updates_dir  # noqa: E402

WAVES: list[int | str] = [1, "10%", "50%", "100%"]
UPDATE_EVENTS = (
    "update_downloading",
    "update_installing",
    "update_succeeded",
    "update_failed",
    "update_rolled_back",
)
OUTCOMES = ("update_succeeded", "update_failed", "update_rolled_back")


class UpdateEvents:
    """Every `update_*` event on the broker: per (terminal, version), when each kind first came."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: dict[tuple[str, str], dict[str, float]] = {}
        self.count: dict[str, int] = {}
        self.last_at: dict[str, float] = {}

    def on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.monotonic()
        if b'"update_' not in msg.payload:
            return
        doc = json.loads(msg.payload)
        kind, version = doc.get("event"), doc.get("version")
        if kind not in UPDATE_EVENTS or not isinstance(version, str):
            return
        tid = msg.topic.split("/")[3]
        with self.lock:
            self.seen.setdefault((tid, version), {}).setdefault(kind, now)
            self.count[version] = self.count.get(version, 0) + 1
            self.last_at[version] = now

    def of(self, version: str) -> dict[str, dict[str, float]]:
        with self.lock:
            return {t: dict(k) for (t, v), k in self.seen.items() if v == version}


def stored_update_events(db: Path, version: str) -> int:
    """`update_*` events of `version` in the server's database (read-only)."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = con.execute(
            "SELECT count(*) FROM terminal_event WHERE kind LIKE 'update\\_%' ESCAPE '\\' "
            "AND json_extract(data, '$.version') = ?",
            (version,),
        ).fetchone()
    finally:
        con.close()
    return int(row[0])


def publish(data: Path, version: str) -> None:
    """Build the bundle of `version` and publish it, as `fleet updates build` + `publish` do."""
    repo = UpdateRepository(server_updates_dir(data))
    repo.add_target(build_bundle(version, data / "bench-releases"), version)


def one_rollout(
    url: str,
    token: str,
    version: str,
    sites: list[str],
    n: int,
    events: UpdateEvents,
    db: Path,
    timeout: float,
) -> dict[str, Any]:
    body = {
        "version": version,
        "target": {"sites": sites},
        "waves": WAVES,
        "override_window": True,
    }
    start = time.monotonic()
    wall = time.time()
    created = http(url + "/api/v1/rollouts", token, "POST", body)
    post_s = time.monotonic() - start
    rid = int(created["id"])
    waves = [[t["id"] for t in w["terminals"]] for w in created["waves"]]

    def finished() -> bool:
        page = http(url + "/api/v1/rollouts?limit=5", token)
        mine = next(r for r in page["items"] if r["id"] == rid)
        return mine["state"] in ("completed", "paused", "aborted")

    wait_for(f"rollout {rid} to finish", finished, timeout, 0.5)
    final = http(url + f"/api/v1/rollouts/{rid}", token)

    def since(stamp: str | None) -> float | None:
        if stamp is None:
            return None
        return round(datetime.fromisoformat(stamp).timestamp() - wall, 3)

    # Wave i is complete when wave i + 1 starts (the same engine step), the last at `finished_at`.
    wave_done: list[float | None] = []
    for i in range(len(waves)):
        if i + 1 < len(waves):
            nxt = final["waves"][i + 1]["terminals"]
            wave_done.append(since(nxt[0]["started_at"]) if nxt else None)
        else:
            wave_done.append(since(final["finished_at"]) if final["state"] == "completed" else None)
    total_s = since(final["finished_at"]) or float("nan")
    # The floor: per wave, the slowest terminal's own simulated update (broker arrival times).
    by_terminal = events.of(version)
    floors: list[float] = []
    for wave in waves:
        spans = [
            max(v for k, v in by_terminal[t].items() if k in OUTCOMES)
            - by_terminal[t]["update_downloading"]
            for t in wave
            if t in by_terminal
            and "update_downloading" in by_terminal[t]
            and any(k in OUTCOMES for k in by_terminal[t])
        ]
        floors.append(max(spans, default=0.0))
    succeeded = sum(1 for k in by_terminal.values() if "update_succeeded" in k)
    # Ingest: every update event seen on the broker also stored by the server.
    expected = 3 * n
    with contextlib.suppress(TimeoutError):  # the figures below say how many are missing
        wait_for(
            "update events stored",
            lambda: stored_update_events(db, version) >= events.count.get(version, 0) >= expected,
            30,
            0.1,
        )
    stored_at = time.monotonic()
    stored = stored_update_events(db, version)
    floor_s = sum(floors)
    return {
        "version": version,
        "rollout": rid,
        "state": final["state"],
        "reason": final.get("reason"),
        "post_s": round(post_s, 3),
        "total_s": round(total_s, 3),
        "waves": [len(w) for w in waves],
        "wave_done_s": wave_done,
        "wave_floor_s": [round(f, 3) for f in floors],
        "floor_s": round(floor_s, 3),
        "ratio": round(total_s / floor_s, 2) if floor_s else float("nan"),
        "succeeded": succeeded,
        "events_seen": events.count.get(version, 0),
        "events_stored": stored,
        "events_expected": expected,
        # When the count was last checked: an upper bound on the last one's storing.
        "events_all_stored_s": round(stored_at - start, 3),
        "events_last_on_broker_s": round(events.last_at.get(version, start) - start, 3),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--terminals", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3, help="rollouts, each to a new version")
    p.add_argument("--timeout", type=float, default=300.0, help="per rollout (default 300 s)")
    p.add_argument("--json", type=Path, help="write the figures here too")
    args = p.parse_args()
    n = args.terminals

    figures: dict[str, Any] = {"terminals": n, "waves_spec": WAVES, "rollouts": []}
    failed = False
    events = UpdateEvents()
    with (
        running_demo("bench-rollout-", n, ready_s=180) as demo,
        server_subscriber(demo, "bench-rollout", "fleet/v1/t/+/event", events.on_message),
    ):
        url, token, data = demo.url, demo.token, demo.data
        db = Path(demo.settings.database_url.removeprefix("sqlite://"))
        t0 = time.monotonic()
        # Start line: every terminal online and its first document applied, as the server sees it.
        online = url + "/api/v1/terminals?state=online&limit=1"
        wait_for("every terminal online", lambda: http(online, token)["total"] >= n, 300, 0.5)
        wait_for("every terminal applied its first document", lambda: drift(url) == 0, 120, 0.5)
        print(f"{n} terminals connected and in sync in {time.monotonic() - t0:.1f} s")

        sites = sorted({s.site.id for s in layout(n)})
        version = agent_version()
        for i in range(args.repeat):
            version = next_patch(version)
            if i > 0:  # the demo published the first one
                publish(data, version)
            try:
                row = one_rollout(url, token, version, sites, n, events, db, args.timeout)
            except TimeoutError as e:
                print(f"FAIL: rollout to {version}: no end within {args.timeout:.0f} s ({e})")
                failed = True
                break
            figures["rollouts"].append(row)
            waves = ", ".join(
                f"{size} at {done:.2f} s" if done is not None else f"{size} not done"
                for size, done in zip(row["waves"], row["wave_done_s"], strict=True)
            )
            print(
                f"rollout {i + 1} (agent {version}): "
                f"POST answered in {row['post_s']:.2f} s; waves {waves}; {row['state']} at "
                f"{row['total_s']:.2f} s; floor {row['floor_s']:.2f} s "
                f"({' + '.join(f'{f:.2f}' for f in row['wave_floor_s'])}), "
                f"ratio {row['ratio']:.2f}; {row['succeeded']}/{n} succeeded; update events: "
                f"{row['events_seen']} on the broker, {row['events_stored']} stored of "
                f"{row['events_expected']} expected (last on the broker at "
                f"{row['events_last_on_broker_s']:.2f} s, all stored by "
                f"{row['events_all_stored_s']:.2f} s)"
            )
            if (
                row["state"] != "completed"
                or row["succeeded"] != n
                or row["events_stored"] < row["events_expected"]
            ):
                print(f"FAIL: rollout {row['rollout']} {row['state']}: {row['reason']}")
                failed = True
                break
        rows = figures["rollouts"]
        if rows:
            med: dict[str, Any] = {
                key: statistics.median(r[key] for r in rows)
                for key in ("post_s", "total_s", "floor_s", "ratio", "events_stored")
            }
            med["wave_done_s"] = [
                statistics.median(r["wave_done_s"][w] or float("nan") for r in rows)
                for w in range(len(rows[0]["waves"]))
            ]
            figures["median"] = med
            print(
                f"median over {len(rows)} rollout(s) of {n} terminals, waves {rows[0]['waves']}: "
                f"waves done at {', '.join(f'{x:.2f}' for x in med['wave_done_s'])} s; "
                f"completed {med['total_s']:.2f} s after the POST; floor (simulated updates) "
                f"{med['floor_s']:.2f} s; ratio {med['ratio']:.2f}; "
                f"{med['events_stored']:.0f}/{3 * n} update events stored"
            )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    print("FAIL" if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
