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
import signal
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

import uvicorn

import rust_core
from fleet.firmware import DEFAULT_FIRMWARE_DIR, HardwareModel, load_models
from fleet.server.api import AppContext, LifespanHook, create_app
from fleet.server.broker import BROKER_SUBDIR, EmbeddedBroker
from fleet.server.desired.keys import load_config_key
from fleet.server.desired.service import DesiredService
from fleet.server.forecast_job import run_forecast_job
from fleet.server.ingest.pipeline import Pipeline
from fleet.server.ingest.receiver import Receiver, ReceiverConfig
from fleet.server.ingest.retention import run_retention
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


def ingest_hook(
    settings: Settings,
    address: BrokerAddress,
    models: Mapping[str, HardwareModel] | None = None,
) -> LifespanHook:
    """The lifespan hook that runs the ingest beside the API (see `create_app`)."""

    @asynccontextmanager
    async def run_ingest(ctx: AppContext) -> AsyncIterator[None]:
        pipeline = Pipeline(
            settings,
            bus=ctx.bus,
            metrics=ctx.metrics,
            models=models,
            update_events=ctx.rollouts.on_update_events,
        )
        await pipeline.restore()
        # Nobody is timed out before the ingest hears the terminals (and then a full timeout).
        pipeline.broker_link(False)
        receiver = Receiver(
            ReceiverConfig(
                host=address.host,
                port=address.port,
                username=settings.broker_admin_user,
                password=settings.broker_admin_password.get_secret_value(),
                client_id=f"{settings.broker_client_id}.ingest",
                tls=address.tls,
            ),
            on_link=pipeline.broker_link,
        )
        await receiver.start()
        with contextlib.suppress(TimeoutError):
            await receiver.wait_connected(CONNECT_WAIT_S)
        if not receiver.connected:
            log.warning("broker %s:%d not reachable yet; retrying", address.host, address.port)
        # Ready only while it can also store: a database that is away holds the ingest.
        ctx.ingest_ready = lambda: receiver.connected and pipeline.storage_ok
        ctx.alert_engine = pipeline.engine
        stop_retention, stop_forecast = asyncio.Event(), asyncio.Event()
        tasks = [
            asyncio.create_task(pipeline.run(receiver), name="ingest"),
            asyncio.create_task(pipeline.run_ticks(TICK_S), name="ingest-ticks"),
            asyncio.create_task(
                run_retention(settings, stop_retention, RETENTION_INTERVAL_S), name="retention"
            ),
            asyncio.create_task(run_forecast_job(pipeline, stop_forecast), name="forecast"),
        ]
        try:
            yield
        finally:
            pipeline.stop()
            stop_retention.set()
            stop_forecast.set()
            # A task stuck in a database call (a server gone silent) must not hold the stop:
            # whatever it had not acknowledged stays with the broker.
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
            await receiver.stop()

    return run_ingest


def desired_hook(
    settings: Settings,
    address: BrokerAddress,
    key: rust_core.SigningKey,
    models: Mapping[str, HardwareModel] | None = None,
) -> LifespanHook:
    """The lifespan hook of the desired state: the publisher and the document service.

    Every connection of the publisher (the first, and each after the broker was away)
    republishes every terminal's latest document: the broker may have lost retained copies
    (a broker without persistence, or a new one), and agents ignore a version they have."""

    @asynccontextmanager
    async def run_desired(ctx: AppContext) -> AsyncIterator[None]:
        service = DesiredService(
            key,
            models=models,
            published_total=ctx.metrics.desired_published,
            agent_targets=ctx.rollouts.agent_targets,
        )

        async def republish() -> None:
            # Layers or firmware_configs/ may have changed while the server was down.
            outcomes = await service.recompute(reason="server start")
            new = sum(o.result == "new" for o in outcomes)
            n = await service.republish_latest()
            log.info("desired state: %d new documents, %d republished", new, n)

        async def first_documents() -> None:
            while True:
                await asyncio.sleep(NEW_TERMINAL_SCAN_S)
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
                client_id=f"{settings.broker_client_id}.pub",
                tls=address.tls,
            ),
            on_connect=republish,
        )
        service.publisher = publisher
        ctx.desired = service
        await publisher.start()
        scan = asyncio.create_task(first_documents(), name="desired-first-documents")
        try:
            yield
        finally:
            scan.cancel()
            ctx.desired = None
            await publisher.stop()

    return run_desired


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
        await task


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
        app = create_app(
            settings,
            context=context,
            hooks=[
                ingest_hook(settings, address, models),
                desired_hook(settings, address, key, models),
                run_refresh,  # re-signs the TUF timestamp of agent releases
                run_rollouts,  # after desired_hook: waves publish documents
            ],
        )
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
