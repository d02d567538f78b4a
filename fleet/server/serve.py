"""`fleet serve`: the API, the MQTT ingest and (without a broker URL) our own Mosquitto, as one.

Start-up order: settings -> broker (started and supervised unless `broker_url` names one) ->
uvicorn, whose lifespan opens the database (migrations applied), restores the ingest's state,
connects the receiver and starts four tasks: the pipeline, the timers (presence timeouts, alert
hold-downs), the history retention and the paper run-out forecast (`forecast_interval_s`); then
the desired state's publisher connects (it republishes every terminal's latest document on each
connection), and the rollouts' timers start. The config key is loaded before anything starts:
without one (outside dev mode) the server does not start.

Shutdown (SIGTERM or Ctrl-C; uvicorn turns both into a lifespan shutdown): the pipeline finishes
and acknowledges the batch in hand, the receiver disconnects (the broker keeps our session and
queues what arrives meanwhile), the database closes, then the broker is stopped, which makes it
save its sessions and queued messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import uvicorn

import rust_core
from fleet.firmware import DEFAULT_FIRMWARE_DIR, HardwareModel, load_models
from fleet.server.api import AppContext, LifespanHook, create_app
from fleet.server.broker import BROKER_SUBDIR, EmbeddedBroker
from fleet.server.db.cluster_lock import ClusterLock, asyncpg_dsn, cluster_dsn
from fleet.server.db.retry import StorageRetry
from fleet.server.desired.keys import load_config_key
from fleet.server.desired.service import DESIRED_LOCK_KEY, DesiredService
from fleet.server.events_bridge import EventsBridge
from fleet.server.forecast_job import run_forecast_job
from fleet.server.ingest.inbox import InboxSource, Relay
from fleet.server.ingest.pipeline import MessageSource, Pipeline
from fleet.server.ingest.receiver import Receiver, ReceiverConfig
from fleet.server.ingest.retention import run_retention
from fleet.server.ingest.retire import BrokerAt, Sweeper, leave_topic, run_heartbeat
from fleet.server.lease import Leadership, leadership_running, new_holder_id, run_while_held
from fleet.server.licences.keys import load_issuer
from fleet.server.mqtt_publish import Publisher, PublisherConfig
from fleet.server.settings import Settings
from fleet.server.updates.freshness import run_refresh

log = logging.getLogger("fleet.serve")

#: Seconds between presence/alert timer runs: a timeout is noticed within this.
TICK_S = 1.0
RETENTION_INTERVAL_S = 3600.0
#: How long start-up waits for the first connection before serving anyway (paho keeps trying).
CONNECT_WAIT_S = 10.0
#: How often terminals registered while the server runs are given their first document.
NEW_TERMINAL_SCAN_S = 15.0
#: How often rollouts look for timed-out terminals and an opened maintenance window.
ROLLOUT_TICK_S = 5.0
#: At a stop, how long the ingest's tasks get to finish the batch in hand.
STOP_WAIT_S = 4.0
#: After a stop is asked for, the process ends by then whatever still waits (_exit_by_deadline).
STOP_DEADLINE_S = 8.0
#: At a stop, how long open HTTP connections (event streams never end) get to close.
HTTP_STOP_WAIT_S = 3


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    tls: bool = False


def parse_broker_url(url: str) -> BrokerAddress:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ValueError(f"broker URL {url!r}: expected mqtt[s]://HOST[:PORT]")
    tls = parts.scheme == "mqtts"
    return BrokerAddress(parts.hostname, parts.port or (8883 if tls else 1883), tls)


def load_hardware_models(settings: Settings) -> dict[str, HardwareModel]:
    """The hardware models of `settings.firmware_dir`, read once at start.

    A bad file stops the start (FirmwareConfigError is a ValueError: one line from `fleet
    serve`), as a bad setting does. Only the default directory may be missing (a server installed
    from a wheel, without the repository): then every terminal gets the default thresholds.
    """
    directory = settings.firmware_dir
    if directory == DEFAULT_FIRMWARE_DIR and not directory.is_dir():
        log.warning("no hardware models: %s does not exist (set FLEET_FIRMWARE_DIR)", directory)
        return {}
    models = load_models(directory)
    log.info("%d hardware models from %s", len(models), directory)
    return models


class LinkWatch:
    """The ingest receiver's link to the broker, for whichever pipeline runs now: presence
    timeouts wait while it is down (Pipeline.broker_link)."""

    def __init__(self) -> None:
        self.up = False
        self.listeners: list[Callable[[bool], None]] = []

    def __call__(self, up: bool) -> None:
        self.up = up
        for listener in list(self.listeners):
            listener(up)


def _receiver(
    settings: Settings,
    address: BrokerAddress,
    watch: LinkWatch,
    on_control: Callable[[bytes], None] | None = None,
) -> Receiver:
    """The ingest's MQTT client: alone, the fixed session `{client id}.ingest`; with replicas,
    `{client id}.ingest.{replica id}` in the shared group, so each replica keeps its own session
    (and what was queued for it) across restarts."""
    shared = settings.replicated
    suffix = f".ingest.{settings.replica_id}" if shared else ".ingest"
    return Receiver(
        ReceiverConfig(
            host=address.host,
            port=address.port,
            username=settings.broker_admin_user,
            password=settings.broker_admin_password.get_secret_value(),
            client_id=settings.broker_client_id + suffix,
            tls=address.tls,
            shared=shared,
            group=settings.ingest_share_group,
            control_topic=leave_topic(settings.replica_id) if shared else None,
        ),
        on_link=watch,
        on_control=on_control,
    )


async def _stop_tasks(tasks: list[asyncio.Task[None]]) -> None:
    # A task stuck in a database call (a server gone silent) must not hold the stop: whatever
    # it had not acknowledged stays with the broker (or in the inbox).
    _, stuck = await asyncio.wait(tasks, timeout=STOP_WAIT_S)
    for task in stuck:
        log.error("%s did not stop in %.0f s; cancelled", task.get_name(), STOP_WAIT_S)
        task.cancel()
    if stuck:
        await asyncio.wait(stuck, timeout=1)
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            if (error := task.exception() if task.done() else None) is not None:
                log.error("%s ended with %r", task.get_name(), error)


@asynccontextmanager
async def _handling(
    ctx: AppContext,
    models: Mapping[str, HardwareModel] | None,
    source: MessageSource,
    watch: LinkWatch,
    lease: Leadership | None = None,
) -> AsyncIterator[Pipeline]:
    """The pipeline on `source`, its timers, the history retention and the forecast job; with
    replicas, each acts only while `lease` is held (a replica that stalled past its lease must
    not go on as if it held it, even for the moment before its term is ended)."""
    settings = ctx.settings
    pipeline = Pipeline(
        settings,
        bus=ctx.bus,
        metrics=ctx.metrics,
        models=models,
        update_events=ctx.rollouts.on_update_events,
        active=(lambda: lease.held) if lease is not None else (lambda: True),
    )
    await pipeline.restore()
    # Nobody is timed out before the ingest hears the terminals (and then a full timeout).
    pipeline.broker_link(False)
    if watch.up:
        pipeline.broker_link(True)
    watch.listeners.append(pipeline.broker_link)
    ctx.alert_engine = pipeline.engine
    stop_retention, stop_forecast = asyncio.Event(), asyncio.Event()
    tasks = [
        asyncio.create_task(pipeline.run(source), name="ingest"),
        asyncio.create_task(pipeline.run_ticks(TICK_S), name="ingest-ticks"),
        asyncio.create_task(
            run_retention(settings, stop_retention, RETENTION_INTERVAL_S), name="retention"
        ),
        asyncio.create_task(run_forecast_job(pipeline, stop_forecast), name="forecast"),
    ]
    try:
        yield pipeline
    finally:
        pipeline.stop()
        stop_retention.set()
        stop_forecast.set()
        await _stop_tasks(tasks)
        watch.listeners.remove(pipeline.broker_link)
        ctx.alert_engine = None


def ingest_hook(
    settings: Settings,
    address: BrokerAddress,
    models: Mapping[str, HardwareModel] | None = None,
) -> LifespanHook:
    """The lifespan hook that runs the ingest beside the API (see `create_app`): one server."""

    @asynccontextmanager
    async def run_ingest(ctx: AppContext) -> AsyncIterator[None]:
        watch = LinkWatch()
        receiver = _receiver(settings, address, watch)
        await receiver.start()
        with contextlib.suppress(TimeoutError):
            await receiver.wait_connected(CONNECT_WAIT_S)
        if not receiver.connected:
            log.warning("broker %s:%d not reachable yet; retrying", address.host, address.port)
        try:
            async with _handling(ctx, models, receiver, watch) as pipeline:
                # Ready only while it can also store: a database that is away holds the ingest.
                ctx.ingest_ready = lambda: receiver.connected and pipeline.storage_ok
                yield
        finally:
            await receiver.stop()

    return run_ingest


def replica_hooks(
    settings: Settings,
    address: BrokerAddress,
    leadership: Leadership,
    models: Mapping[str, HardwareModel] | None = None,
) -> tuple[LifespanHook, LifespanHook]:
    """With replicas: the relay (every replica) and the singletons (the lease holder's)."""
    watch = LinkWatch()
    handler: list[Pipeline] = []

    @asynccontextmanager
    async def run_relay(ctx: AppContext) -> AsyncIterator[None]:
        stop = asyncio.Event()
        # A batch insert takes milliseconds: one not done in 5 s means the database is away
        # (or silent), and this replica must say so (healthz, the leave request below).
        retry = StorageRetry(stop, ctx.metrics.ingest_storage_retries, deadline_s=5.0)
        leaving: set[asyncio.Task[None]] = set()

        def asked_to_leave(_payload: bytes) -> None:
            # Only a replica that cannot store obeys: the one that asks can (retire.py).
            if not retry.ok and not receiver.left:
                log.warning("asked to leave the shared group while the database is away: leaving")
                task = asyncio.get_running_loop().create_task(receiver.leave())
                leaving.add(task)
                task.add_done_callback(leaving.discard)

        async def rejoin_when_storing() -> None:
            while not stop.is_set():
                if receiver.left and retry.ok:
                    log.warning("storing again: back in the shared group")
                    receiver.rejoin()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

        receiver = _receiver(settings, address, watch, on_control=asked_to_leave)
        relay = Relay(retry, settings.ingest_batch_size, ctx.metrics.ingest_relayed.inc)
        await receiver.start()
        with contextlib.suppress(TimeoutError):
            await receiver.wait_connected(CONNECT_WAIT_S)
        ctx.ingest_ready = lambda: (
            receiver.connected and retry.ok and all(p.storage_ok for p in handler)
        )
        tasks = [
            asyncio.create_task(relay.run(receiver, stop), name="relay"),
            asyncio.create_task(
                run_heartbeat(settings.replica_id, leadership.holder, stop), name="heartbeat"
            ),
            asyncio.create_task(rejoin_when_storing(), name="rejoin"),
        ]
        try:
            yield
        finally:
            stop.set()
            await _stop_tasks(tasks)
            await receiver.stop()

    @asynccontextmanager
    async def handle_inbox(ctx: AppContext) -> AsyncIterator[None]:
        stop = asyncio.Event()
        source = InboxSource(StorageRetry(stop, ctx.metrics.ingest_storage_retries))
        try:
            async with _handling(ctx, models, source, watch, leadership) as pipeline:
                handler.append(pipeline)
                try:
                    yield
                finally:
                    handler.remove(pipeline)
                    stop.set()
        finally:
            await source.close()

    @asynccontextmanager
    async def sweep_replicas(ctx: AppContext) -> AsyncIterator[None]:
        stop = asyncio.Event()

        async def ask_to_leave(replica_id: str) -> None:
            if ctx.desired is None or ctx.desired.publisher is None:
                raise RuntimeError("no publisher")
            await ctx.desired.publisher.publish(leave_topic(replica_id), b"{}")

        sweeper = Sweeper(
            settings, BrokerAt(address.host, address.port, address.tls), ask=ask_to_leave
        )
        task = asyncio.create_task(sweeper.run(stop), name="sweep-replicas")
        try:
            yield
        finally:
            stop.set()
            await _stop_tasks([task])

    @asynccontextmanager
    async def run_singletons(ctx: AppContext) -> AsyncIterator[None]:
        hooks: list[LifespanHook] = [handle_inbox, sweep_replicas, run_rollouts]
        leadership.on_change = ctx.metrics.lease_held.set
        async with leadership_running(leadership) as stop:
            task = asyncio.create_task(
                run_while_held(leadership, [partial(h, ctx) for h in hooks], stop),
                name="singletons",
            )
            try:
                yield
            finally:
                stop.set()
                await _stop_tasks([task])

    return run_relay, run_singletons


def desired_hook(
    settings: Settings,
    address: BrokerAddress,
    key: rust_core.SigningKey,
    models: Mapping[str, HardwareModel] | None = None,
    leadership: Leadership | None = None,
) -> LifespanHook:
    """The lifespan hook of the desired state: the publisher and the document service.

    Every connection of the publisher (the first, and each after the broker was away)
    republishes every terminal's latest document: the broker may have lost retained copies
    (a broker without persistence, or a new one), and agents ignore a version they have.

    With replicas every replica publishes what its API changes, but only the lease holder
    recomputes at start, republishes and gives new terminals their first document: two replicas
    starting together must not both make a new version of every document. It does so at the
    start of each of its terms, and on each connection of its publisher during one."""
    lease = leadership or Leadership.solo()

    @asynccontextmanager
    async def run_desired(ctx: AppContext) -> AsyncIterator[None]:
        service = DesiredService(
            key,
            models=models,
            published_total=ctx.metrics.desired_published,
            agent_targets=ctx.rollouts.agent_targets,
            lock=ClusterLock(
                DESIRED_LOCK_KEY,
                cluster_dsn(settings),
            ),
        )

        once = asyncio.Lock()

        async def republish() -> None:
            async with once:
                if not lease.held:
                    return
                # Layers or firmware_configs/ may have changed while the server was down.
                outcomes = await service.recompute(reason="server start")
                new = sum(o.result == "new" for o in outcomes)
                n = await service.republish_latest()
                log.info("desired state: %d new documents, %d republished", new, n)

        async def each_term() -> None:
            while True:
                await lease.wait_held()
                if publisher.connected:  # else its connection does it
                    try:
                        await republish()
                    except Exception:
                        log.exception("desired state: republishing for a new term failed")
                await lease.wait_lost()

        async def first_documents() -> None:
            while True:
                await asyncio.sleep(NEW_TERMINAL_SCAN_S)
                if not lease.held:
                    continue
                try:
                    await service.recompute_new_terminals()
                except Exception:  # the next scan tries again
                    log.exception("desired state: first documents failed")

        publisher = Publisher(
            PublisherConfig(
                host=address.host,
                port=address.port,
                username=settings.broker_admin_user,
                password=settings.broker_admin_password.get_secret_value(),
                client_id=settings.broker_client_id
                + (f".pub.{settings.replica_id}" if settings.replicated else ".pub"),
                tls=address.tls,
            ),
            on_connect=republish,
        )
        service.publisher = publisher
        ctx.desired = service
        await publisher.start()
        tasks = [asyncio.create_task(first_documents(), name="desired-first-documents")]
        if lease.shared:
            tasks.append(asyncio.create_task(each_term(), name="desired-terms"))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            ctx.desired = None
            await publisher.stop()
            await service.close()

    return run_desired


def bridge_hook(origin: str) -> LifespanHook:
    """With replicas: every replica's event stream shows every replica's events."""

    @asynccontextmanager
    async def run_bridge(ctx: AppContext) -> AsyncIterator[None]:
        def on_remote(kind: str, data: Mapping[str, Any]) -> None:
            # An alert acknowledged through another replica's API: the engine must know.
            if kind == "alert" and data.get("transition") == "acked" and ctx.alert_engine:
                ctx.alert_engine.acknowledge(str(data.get("terminal")), str(data.get("rule")))

        bridge = EventsBridge(
            ctx.bus, asyncpg_dsn(ctx.settings.database_url), origin, on_remote=on_remote
        )
        stop = asyncio.Event()
        task = asyncio.create_task(bridge.run(stop), name="events-bridge")
        ctx.bus.forward = bridge.forward
        try:
            yield
        finally:
            ctx.bus.forward = None
            stop.set()
            await _stop_tasks([task])

    return run_bridge


@asynccontextmanager
async def run_rollouts(ctx: AppContext) -> AsyncIterator[None]:
    """Lifespan hook: the rollout engine's timers (per-terminal timeouts, waves waiting for
    their maintenance window), every ROLLOUT_TICK_S."""
    stop = asyncio.Event()
    task = asyncio.create_task(ctx.rollouts.run_ticks(stop, ROLLOUT_TICK_S), name="rollouts")
    try:
        yield
    finally:
        stop.set()
        await _stop_tasks([task])


def _exit_by_deadline(
    server: uvicorn.Server, broker: EmbeddedBroker | None, stopped_by: list[int]
) -> None:
    """Once a stop is asked for, end the process STOP_DEADLINE_S later whatever still waits.

    Every wait of the stop is bounded, but a database that has gone silent (a frozen host)
    holds the cancellation of a query for ever (db/deadline.py), and asyncio's own shutdown
    waits for every cancelled task: without this a SIGTERM could leave the server running."""

    def watch() -> None:
        while not server.should_exit:
            time.sleep(0.2)
        time.sleep(STOP_DEADLINE_S)
        log.error("still stopping after %.0f s: exiting now", STOP_DEADLINE_S)
        if broker is not None:
            with contextlib.suppress(Exception):
                broker.stop()
        logging.shutdown()
        os._exit(130 if signal.SIGINT in stopped_by else 0)

    threading.Thread(target=watch, name="stop-deadline", daemon=True).start()


def _catch_stop_signals() -> list[int]:
    """Record SIGTERM/SIGINT instead of dying on them.

    uvicorn handles both while it runs (a graceful shutdown), then restores the previous handlers
    and raises the signal again; with Python's defaults that would kill the process before our
    `finally` stops the broker, which runs in its own session and would outlive us.
    """
    caught: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: caught.append(signum))
    return caught


def serve(settings: Settings, *, log_level: str = "info") -> int:
    """Run until SIGTERM/SIGINT; returns the exit status."""
    models = load_hardware_models(settings)  # before anything starts: a bad file stops us here
    key = load_config_key(settings)  # likewise a missing config key (outside dev mode)
    issuer = load_issuer(settings)  # and the issuing key that signs licences
    context = AppContext(settings, issuer=issuer)
    broker: EmbeddedBroker | None = None
    if settings.broker_url is None:
        broker = EmbeddedBroker(
            settings.data_dir / BROKER_SUBDIR,
            server_user=settings.broker_admin_user,
            server_password=settings.broker_admin_password.get_secret_value(),
            on_event=lambda kind: context.metrics.broker_clients.labels(kind).inc(),
        ).start()
        # The server's own listener: terminal credentials cannot log in there.
        address = parse_broker_url(broker.server_url)
    else:
        address = parse_broker_url(settings.broker_url)
    try:
        hooks: list[LifespanHook]
        if settings.replicated:
            leadership = Leadership(new_holder_id(settings.replica_id))
            relay, singletons = replica_hooks(settings, address, leadership, models)
            hooks = [
                bridge_hook(leadership.holder),
                relay,
                desired_hook(settings, address, key, models, leadership),
                run_refresh,  # this replica's own update repository (its data_dir)
                singletons,  # after desired_hook: waves publish documents
            ]
        else:
            hooks = [
                ingest_hook(settings, address, models),
                desired_hook(settings, address, key, models),
                run_refresh,  # re-signs the TUF timestamp of agent releases
                run_rollouts,  # after desired_hook: waves publish documents
            ]
        app = create_app(settings, context=context, hooks=hooks)
        config = uvicorn.Config(
            app,
            host=settings.api_host,
            port=settings.api_port,
            log_level=log_level,
            # One line per request is noise at fleet scale; errors are still logged.
            access_log=False,
            # Without it a SIGTERM waits for every open event stream to end: for ever.
            timeout_graceful_shutdown=HTTP_STOP_WAIT_S,
        )
        server = uvicorn.Server(config)
        stopped_by = _catch_stop_signals()
        _exit_by_deadline(server, broker, stopped_by)
        log.info(
            "fleet serving http://%s:%d (broker %s:%d)",
            settings.api_host,
            settings.api_port,
            address.host,
            address.port,
        )
        server.run()
        if not server.started:
            return 1
        # A stop asked for by a signal is a clean stop (systemd expects 0 for SIGTERM).
        return 130 if signal.SIGINT in stopped_by else 0
    finally:
        if broker is not None:
            broker.stop()
