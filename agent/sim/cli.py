"""`fleet-sim`: N simulated terminals in one process, and the password file they need.

    fleet-sim make-passwd --terminals 5000 --out passwd --password-template 'sim-{id}' \\
        --user fleet-server:SECRET                       # hashed Mosquitto password file
    fleet-sim --terminals 5000 --broker mqtt://127.0.0.1:1883 --password-template 'sim-{id}' \\
        --status-interval 10 --duration 600              # run them
    fleet-sim layout --terminals 50                      # which terminal stands at which site

With `--config-public-key fleet-config.pub` (PEM or DER SubjectPublicKeyInfo, the fleet's EdDSA
config key) each terminal verifies and applies its signed `desired` document and says so on
`reported`; without it every document is refused with "no config key". A document naming another
agent version makes the terminal simulate a self-update (agent/sim/update.py): `--update-seconds
1,2` how long one takes (uniform between the two), `--bad-versions 1.2.0,1.3.0` releases whose
health check fails (rolled back), `--update-failure-rate 0.05` the chance any other one fails.

Without a template, `make-passwd --credentials creds.txt` draws random passwords and keeps them in
`creds.txt` (mode 0600) for `fleet-sim --password-file creds.txt`.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

import rust_core
from agent.sim import credentials
from agent.sim.pool import Pool, PoolConfig, Stats
from agent.sim.sites import TerminalSpec, layout
from agent.sim.terminal import Behaviour, SimTerminal
from agent.sim.update import UpdatePolicy

#: Descriptors beyond one socket per terminal: the selector, stdio, Python's own files.
SPARE_FDS = 64


class UsageError(Exception):
    pass


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def _seconds_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition(",")
    try:
        lo, hi = float(low), float(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError("expected SECONDS or MIN,MAX, e.g. 1,2") from None
    if not 0 <= lo <= hi:
        raise argparse.ArgumentTypeError("expected 0 <= MIN <= MAX")
    return lo, hi


def _probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError("a probability in [0, 1]")
    return value


def _versions(text: str) -> frozenset[str]:
    return frozenset(v.strip() for v in text.split(",") if v.strip())


def _shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    i, k = int(index), int(count or "0")
    if not 0 <= i < k:
        raise argparse.ArgumentTypeError("expected I/K with 0 <= I < K, e.g. 0/2")
    return i, k


def _run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fleet-sim",
        description="Run N simulated kiosk terminals, each with its own MQTT connection.",
        epilog="Other commands: fleet-sim make-passwd --help, fleet-sim layout --help.",
    )
    p.add_argument("--terminals", type=_positive_int, required=True)
    p.add_argument("--broker", required=True, help="mqtt://HOST:PORT")
    creds = p.add_mutually_exclusive_group(required=True)
    creds.add_argument("--password-file", type=Path, help="id:password per line")
    creds.add_argument("--password-template", help="password for each terminal, {id} replaced")
    p.add_argument("--status-interval", type=float, default=10.0, help="seconds (default 10)")
    p.add_argument("--duration", type=float, default=None, help="seconds, then stop (default: run)")
    p.add_argument("--poll-interval", type=float, default=1.0, help="device read, seconds")
    p.add_argument(
        "--batch",
        type=_positive_int,
        default=64,
        help="connects in flight, under the broker's listen backlog",
    )
    p.add_argument("--keepalive", type=_positive_int, default=60)
    p.add_argument("--capacity", type=_positive_int, default=500, help="sheets per tray")
    p.add_argument("--sheets-per-licence", type=_positive_int, default=1)
    p.add_argument("--prints-per-hour", type=float, default=20.0)
    p.add_argument("--jam-rate", type=float, default=0.002, help="probability per print")
    p.add_argument("--card-rate", type=float, default=0.0, help="ID cards inserted per hour")
    p.add_argument("--time-scale", type=float, default=1.0, help="speed up the paper model")
    p.add_argument("--agent-version", default="0.1.0")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--shard", type=_shard, default=None, help="I/K: run every K-th terminal from I")
    p.add_argument("--stats-interval", type=float, default=10.0)
    p.add_argument("--summary", type=Path, default=None, help="write the final stats as JSON")
    p.add_argument(
        "--config-public-key",
        type=Path,
        default=None,
        help="the fleet's config-signing public key (PEM or DER): desired documents are checked",
    )
    p.add_argument(
        "--update-seconds",
        type=_seconds_range,
        default=(1.0, 2.0),
        metavar="MIN[,MAX]",
        help="a simulated self-update's download, install, restart and health check (default 1,2)",
    )
    p.add_argument(
        "--bad-versions",
        type=_versions,
        default=frozenset(),
        metavar="V,V...",
        help="agent releases that fail their health check and are rolled back",
    )
    p.add_argument(
        "--update-failure-rate",
        type=_probability,
        default=0.0,
        metavar="P",
        help="chance that an update to any other release is rolled back (default 0)",
    )
    return p


def _make_passwd_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fleet-sim make-passwd",
        description="Write a Mosquitto password file for the simulated terminals.",
    )
    p.add_argument("--terminals", type=_positive_int, required=True)
    p.add_argument("--out", type=Path, required=True, help="Mosquitto password file (hashes)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--password-template", help="password for each terminal, {id} replaced")
    src.add_argument("--credentials", type=Path, help="draw random passwords, keep them here")
    p.add_argument(
        "--user", action="append", default=[], help="NAME:PASSWORD of another user, repeatable"
    )
    return p


def _layout_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fleet-sim layout", description="Terminals and their sites.")
    p.add_argument("--terminals", type=_positive_int, required=True)
    return p


def broker_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "mqtt" or not parts.hostname:
        raise UsageError(f"--broker {url!r}: expected mqtt://HOST:PORT (the simulator has no TLS)")
    return parts.hostname, parts.port or 1883


def raise_fd_limit(needed: int) -> int:
    """Raise RLIMIT_NOFILE to cover `needed` descriptors; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        try:  # root may raise the hard limit too (up to fs.nr_open)
            resource.setrlimit(resource.RLIMIT_NOFILE, (needed, needed))
            return needed
        except (ValueError, OSError):
            raise UsageError(
                f"{needed} file descriptors needed but the hard limit is {hard}: "
                "raise it (ulimit -Hn, or LimitNOFILE= in a unit) or run fewer terminals"
            ) from None
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed


def load_config_key(path: Path) -> rust_core.VerifyingKey:
    data = path.read_bytes()
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            key = rust_core.VerifyingKey.from_pem(data)
        else:
            key = rust_core.VerifyingKey.from_spki(data)
    except ValueError as e:
        raise UsageError(f"--config-public-key {path}: {e}") from None
    if key.alg != "EdDSA":
        raise UsageError(f"--config-public-key {path}: an {key.alg} key, not EdDSA")
    return key


def _passwords(args: argparse.Namespace, specs: Sequence[TerminalSpec]) -> dict[str, str]:
    ids = [s.terminal_id for s in specs]
    if args.password_template is not None:
        return credentials.from_template(args.password_template, ids)
    known = credentials.read_credentials(args.password_file)
    missing = [tid for tid in ids if tid not in known]
    if missing:
        raise UsageError(
            f"{args.password_file}: no password for {len(missing)} terminals, e.g. {missing[0]}"
        )
    return {tid: known[tid] for tid in ids}


def _print_stats(started: float) -> Callable[[Stats], None]:
    def show(s: Stats) -> None:
        t = time.monotonic() - started
        print(
            f"fleet-sim {t:7.1f}s connected {s.connected}/{s.terminals} "
            f"status {s.status_sent} events {s.events_sent} reported {s.reported_sent} "
            f"(ok {s.desired_ok}) results {s.results_sent} acked {s.acked} "
            f"denied {s.denied} refused {s.refused} lag max {s.max_lag_s:.2f}s",
            file=sys.stderr,
            flush=True,
        )

    return show


def run(argv: Sequence[str]) -> int:
    args = _run_parser().parse_args(argv)
    host, port = broker_address(args.broker)
    specs = layout(args.terminals)
    if args.shard is not None:
        index, count = args.shard
        specs = specs[index::count]
    passwords = _passwords(args, specs)
    config_key = None
    if args.config_public_key is not None:
        config_key = load_config_key(args.config_public_key)
    raise_fd_limit(len(specs) + SPARE_FDS)

    behaviour = Behaviour(
        status_interval_s=args.status_interval,
        capacity=args.capacity,
        sheets_per_licence=args.sheets_per_licence,
        prints_per_hour=args.prints_per_hour,
        jam_rate=args.jam_rate,
        card_rate=args.card_rate,
        agent_version=args.agent_version,
        update=UpdatePolicy(
            seconds=args.update_seconds,
            bad_versions=args.bad_versions,
            failure_rate=args.update_failure_rate,
        ),
    )
    t0 = time.monotonic()
    scale: float = args.time_scale

    def model_clock() -> float:
        return t0 + (time.monotonic() - t0) * scale

    seeds = random.Random(args.seed)
    terminals = [
        SimTerminal(s, behaviour, seeds.getrandbits(64), model_clock, config_key) for s in specs
    ]
    cfg = PoolConfig(
        host=host,
        port=port,
        keepalive_s=args.keepalive,
        batch=args.batch,
        poll_interval_s=args.poll_interval,
    )
    pool = Pool(terminals, passwords, cfg, seed=seeds.getrandbits(64))

    stop: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    deadline = t0 + args.duration if args.duration is not None else float("inf")
    stats = pool.run(
        deadline,
        should_stop=lambda: bool(stop),
        on_stats=_print_stats(t0),
        stats_interval_s=args.stats_interval,
    )
    summary = stats.to_json() | {"elapsed_s": round(time.monotonic() - t0, 3)}
    text = json.dumps(summary, ensure_ascii=False)
    print(text, flush=True)
    if args.summary is not None:
        args.summary.write_text(text + "\n", encoding="utf-8")
    return 0 if stats.connects else 1


def make_passwd(argv: Sequence[str]) -> int:
    args = _make_passwd_parser().parse_args(argv)
    ids = [s.terminal_id for s in layout(args.terminals)]
    if args.password_template is not None:
        users = credentials.from_template(args.password_template, ids)
    else:
        users = credentials.random_passwords(ids)
        credentials.write_credentials(args.credentials, users)
    for extra in args.user:
        name, sep, password = extra.partition(":")
        if not sep or not name:
            raise UsageError(f"--user {extra!r}: expected NAME:PASSWORD")
        users[name] = password
    credentials.write_passwd(args.out, users)
    print(f"{args.out}: {len(users)} users", file=sys.stderr)
    return 0


def show_layout(argv: Sequence[str]) -> int:
    args = _layout_parser().parse_args(argv)
    for spec in layout(args.terminals):
        line = {"terminal_id": spec.terminal_id, "site": spec.site.to_json()}
        print(json.dumps(line, ensure_ascii=False))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    commands = {"make-passwd": make_passwd, "layout": show_layout, "run": run}
    command = commands.get(args[0], run) if args else run
    if args and args[0] in commands:
        args = args[1:]
    try:
        return command(args)
    except (UsageError, ValueError, OSError) as e:
        print(f"fleet-sim: {e}", file=sys.stderr)
        return 2
