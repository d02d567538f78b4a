"""Computing, versioning, signing and publishing each terminal's desired-state document.

A terminal's document is computed from: the layers (defaults <- the default layer in the
database <- its hardware model's `[desired]` from firmware_configs/ <- the model layer <- its
site's layer <- its own layer), the templates assigned to its site or to itself (a terminal's own
assignment of a template wins over its site's), and the target agent version (`agent_targets`,
the rollouts' answer: fleet.server.rollouts.targets; none without it).

A document gets a new version only when its content (all but `version` and `issued_at`) differs
from the terminal's latest one; it is then sealed with the config key, stored as history
(`DesiredDoc`, unique per (terminal, version)) and published retained, QoS 1, on
`fleet/v1/t/{id}/desired`. A failed publish leaves the document stored with `published_at` null:
the database is the truth, and `republish_latest` (run on every publisher connection) and the
next change of the terminal deliver it.

Concurrency: every change runs under one lock, from reading the inputs to the last publish, so a
later change always computes from what the earlier one wrote and publishes after it (a retained
copy never goes back to an older version). The server is one process per database; should another
process insert a version meanwhile, the unique (terminal, version) refuses the second and the
change retries with the next version.

Rollback publishes an old version's content as a new version; the layers are not changed, so the
next layer change of that terminal computes from the layers again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from tortoise.exceptions import IntegrityError
from tortoise.functions import Max

import rust_core
from agent.desired.document import (
    MAX_TEMPLATE_BYTES,
    MODEL_ID,
    SCHEMA_VERSION,
    DocumentError,
    canonical,
    check_config,
    seal,
    sha256_hex,
    template_entry,
)
from fleet.server.db.cluster_lock import ClusterLock
from fleet.server.db.models import (
    AssignmentScope,
    ConfigLayer,
    DesiredDoc,
    LayerScope,
    Template,
    TemplateAssignment,
    TemplateVersion,
    Terminal,
)
from fleet.server.desired.layers import HardwareModel, explain, layers_of, leaf_paths, merge
from fleet.server.mqtt_publish import PublishError

log = logging.getLogger(__name__)

#: Changes touching more terminals run this many at a time (signing and publishing overlap).
BULK_CONCURRENCY = 16
_INSERT_ATTEMPTS = 5


def desired_topic(terminal_id: str) -> str:
    return f"fleet/v1/t/{terminal_id}/desired"


class MessagePublisher(Protocol):
    """What the service needs of `mqtt_publish.Publisher`."""

    async def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None: ...


#: terminal ids (None: all) -> {terminal id: target agent version}; absent terminals get none.
AgentTargets = Callable[[Sequence[str] | None], Awaitable[Mapping[str, str]]]


class PublishCounter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class TemplateError(ValueError):
    """A template's content is not a form definition; `path` names the field."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


@dataclass(frozen=True)
class Outcome:
    """What a change did to one terminal's document."""

    terminal: str
    result: Literal["new", "unchanged", "error"]
    version: int | None = None
    hash: str | None = None
    #: Did the broker take the (new or unchanged) latest document? None on error.
    published: bool | None = None
    error: str | None = None


@dataclass
class _Inputs:
    """Everything documents are computed from, read once per change."""

    layers: dict[tuple[str, str], dict[str, Any]]
    #: (scope, key) -> {template id: pinned version or None for the latest}
    assignments: dict[tuple[str, str], dict[str, int | None]]
    latest: dict[str, int]
    contents: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    #: terminal id -> target agent version (rollouts)
    agents: Mapping[str, str] = field(default_factory=dict)


def utc_now() -> datetime:
    return datetime.now(UTC)


def _stamp(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def content_of(payload: str | bytes) -> dict[str, Any]:
    """A stored document without what changes on every version (`version`, `issued_at`)."""
    doc: dict[str, Any] = json.loads(payload)
    doc.pop("version", None)
    doc.pop("issued_at", None)
    return doc


def check_template(content: Any) -> None:
    """A template is an object with a JSON-Schema-like `schema` object and a `layout`."""
    if not isinstance(content, dict):
        raise TemplateError("", "must be a JSON object")
    schema = content.get("schema")
    if not isinstance(schema, dict):
        raise TemplateError("schema", "missing or not an object (a JSON Schema)")
    if schema.get("type", "object") != "object":
        raise TemplateError("schema.type", 'a form\'s schema must be of type "object"')
    props = schema.get("properties", {})
    if not isinstance(props, dict) or not all(isinstance(v, dict) for v in props.values()):
        raise TemplateError("schema.properties", "must map field names to schemas")
    required = schema.get("required", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise TemplateError("schema.required", "must be a list of field names")
    if "layout" not in content or not isinstance(content["layout"], list | dict):
        raise TemplateError("layout", "missing or not a list or object")
    size = len(canonical(content))
    if size > MAX_TEMPLATE_BYTES:
        raise TemplateError("", f"{size} bytes, over the limit of {MAX_TEMPLATE_BYTES}")


#: The advisory lock of desired-state changes across replicas ("desired" in ASCII).
DESIRED_LOCK_KEY = 0x64657369726564


class DesiredService:
    """The one writer of desired-state documents in a server process."""

    def __init__(
        self,
        key: rust_core.SigningKey,
        publisher: MessagePublisher | None = None,
        *,
        models: Mapping[str, HardwareModel] | None = None,
        published_total: PublishCounter | None = None,
        clock: Callable[[], datetime] = utc_now,
        agent_targets: AgentTargets | None = None,
        lock: ClusterLock | None = None,
    ) -> None:
        """`lock`: with replicas, one that holds across them (db/cluster_lock.py): two
        replicas changing layers at once must not issue versions from layers read before the
        other's change."""
        if key.alg != "EdDSA":
            raise ValueError(f"the config key must be EdDSA, not {key.alg}")
        self.key = key
        self.publisher = publisher
        self.models: Mapping[str, HardwareModel] = models or {}
        self.published_total = published_total
        self.clock = clock
        #: Where the target agent version of each terminal comes from (the rollouts).
        self.agent_targets = agent_targets
        self._lock = lock or ClusterLock(DESIRED_LOCK_KEY)

    async def close(self) -> None:
        """Let go of the lock's own connection (replicas)."""
        await self._lock.close()

    # -- reading ------------------------------------------------------------------------------

    async def compute(self, terminal: Terminal) -> dict[str, Any]:
        """The content the terminal's next document would have (no version, no issued_at)."""
        inputs = await self._inputs([terminal.id])
        return self._content(terminal, inputs)

    # -- changes ------------------------------------------------------------------------------

    async def recompute(
        self, terminal_ids: Iterable[str] | None = None, reason: str = "recompute"
    ) -> list[Outcome]:
        """Recompute (and publish where changed) the given terminals, or all of them."""
        async with self._lock:
            return await self._recompute(terminal_ids, reason)

    async def recompute_new_terminals(self) -> list[Outcome]:
        """Give a first document to every terminal that has none (provisioned or auto-registered
        while the server ran)."""
        async with self._lock:
            have = set(await DesiredDoc.all().distinct().values_list("terminal_id", flat=True))
            every = await Terminal.all().values_list("id", flat=True)
            ids = [str(t) for t in every if t not in have]
            return await self._recompute(ids, "first document") if ids else []

    async def set_layer(
        self, scope: LayerScope, key: str, layer: dict[str, Any], by: str
    ) -> list[Outcome]:
        """Replace a layer (checked by the caller) and recompute every terminal it reaches."""
        async with self._lock:
            await ConfigLayer.update_or_create(
                scope=scope,
                key=key,
                defaults={"layer": layer, "updated_at": self.clock(), "updated_by": by},
            )
            return await self._recompute(
                await affected_terminals(scope, key), f"{scope.value} layer {key}".strip()
            )

    async def put_template(
        self, template_id: str, content: dict[str, Any], by: str
    ) -> tuple[TemplateVersion, bool, list[Outcome]]:
        """Store `content` as the template's next version (unless it is the latest already);
        (version row, whether it is new, outcomes of the terminals that follow the latest)."""
        check_template(content)
        data = canonical(content)
        digest = sha256_hex(data)
        async with self._lock:
            now = self.clock()
            await Template.get_or_create(id=template_id, defaults={"created_at": now})
            latest = (
                await TemplateVersion.filter(template_id=template_id).order_by("-version").first()
            )
            if latest is not None and latest.sha256 == digest:
                return latest, False, []
            row = await TemplateVersion.create(
                template_id=template_id,
                version=(latest.version if latest else 0) + 1,
                content=content,
                sha256=digest,
                size=len(data),
                created_at=now,
                created_by=by,
            )
            followers = await TemplateAssignment.filter(
                template_id=template_id, version__isnull=True
            ).values_list("scope", "key")
            ids = await _terminals_of(followers)
            outcomes = await self._recompute(ids, f"template {template_id} v{row.version}")
            return row, True, outcomes

    async def set_assignments(
        self,
        template_id: str,
        sites: Mapping[str, int | None],
        terminals: Mapping[str, int | None],
    ) -> list[Outcome]:
        """Replace the template's assignments; recompute every terminal gaining or losing it."""
        async with self._lock:
            before = await TemplateAssignment.filter(template_id=template_id).values_list(
                "scope", "key"
            )
            await TemplateAssignment.filter(template_id=template_id).delete()
            for scope, keys in (
                (AssignmentScope.SITE, sites),
                (AssignmentScope.TERMINAL, terminals),
            ):
                for key, version in keys.items():
                    await TemplateAssignment.create(
                        template_id=template_id, scope=scope, key=key, version=version
                    )
            after = [(AssignmentScope.SITE.value, k) for k in sites]
            after += [(AssignmentScope.TERMINAL.value, k) for k in terminals]
            ids = await _terminals_of([*before, *after])
            return await self._recompute(ids, f"template {template_id} assignments")

    async def rollback(self, terminal_id: str, version: int) -> Outcome | None:
        """Publish version `version`'s content as a new version; None if there is no such one."""
        async with self._lock:
            old = await DesiredDoc.get_or_none(terminal_id=terminal_id, version=version)
            if old is None:
                return None
            return await self._issue(terminal_id, content_of(old.payload), f"rollback to {version}")

    async def republish_latest(self, terminal_ids: Iterable[str] | None = None) -> int:
        """Publish each terminal's latest document again (after a broker restart, on start-up);
        the number the broker took. Harmless for agents: they ignore a version they have."""
        async with self._lock:
            query = DesiredDoc.all()
            if terminal_ids is not None:
                query = query.filter(terminal_id__in=list(terminal_ids))
            latest = await _latest_ids(query)
            rows = await DesiredDoc.filter(id__in=latest) if latest else []
            sem = asyncio.Semaphore(BULK_CONCURRENCY)

            async def one(row: DesiredDoc) -> bool:
                async with sem:
                    return await self._publish(row) is None

            results = await asyncio.gather(*(one(r) for r in rows))
            return sum(results)

    # -- under the lock -----------------------------------------------------------------------

    async def _recompute(self, terminal_ids: Iterable[str] | None, reason: str) -> list[Outcome]:
        query = Terminal.all().order_by("id")
        if terminal_ids is not None:
            query = query.filter(id__in=sorted(set(terminal_ids)))
        terminals = await query
        inputs = await self._inputs([t.id for t in terminals] if terminal_ids is not None else None)
        sem = asyncio.Semaphore(BULK_CONCURRENCY)

        async def one(t: Terminal) -> Outcome:
            async with sem:
                try:
                    content = self._content(t, inputs)
                except DocumentError as e:
                    return Outcome(t.id, "error", error=f"computed document: {e}")
                try:
                    return await self._issue(t.id, content, reason)
                except Exception as e:  # one terminal's failure must not stop a bulk change
                    log.exception("desired document for %s failed", t.id)
                    return Outcome(t.id, "error", error=f"{type(e).__name__}: {e}")

        return list(await asyncio.gather(*(one(t) for t in terminals)))

    async def _issue(self, terminal_id: str, content: dict[str, Any], reason: str) -> Outcome:
        latest = await DesiredDoc.filter(terminal_id=terminal_id).order_by("-version").first()
        if latest is not None and content_of(latest.payload) == content:
            published = latest.published_at is not None
            if not published:
                published = await self._publish(latest) is None
            return Outcome(terminal_id, "unchanged", latest.version, latest.hash, published)
        for _ in range(_INSERT_ATTEMPTS):
            version = (latest.version if latest is not None else 0) + 1
            now = self.clock()
            doc = {**content, "version": version, "issued_at": _stamp(now)}
            envelope, digest = seal(doc, self.key)
            try:
                row = await DesiredDoc.create(
                    terminal_id=terminal_id,
                    version=version,
                    hash=digest,
                    payload=canonical(doc).decode(),
                    envelope=envelope.decode(),
                    created_at=now,
                    reason=reason[:200],
                )
            except IntegrityError:
                # Another process took this version: go on from the one it wrote.
                latest = (
                    await DesiredDoc.filter(terminal_id=terminal_id).order_by("-version").first()
                )
                continue
            error = await self._publish(row)
            return Outcome(terminal_id, "new", version, digest, error is None, error)
        return Outcome(terminal_id, "error", error="could not take a new version")

    async def _publish(self, row: DesiredDoc) -> str | None:
        """Publish a stored document; None on success, else why not."""
        if self.publisher is None:
            return "no publisher"
        try:
            await self.publisher.publish(
                desired_topic(row.terminal_id), row.envelope.encode(), retain=True
            )
        except PublishError as e:
            log.warning("desired v%d for %s not published: %s", row.version, row.terminal_id, e)
            return str(e)
        await DesiredDoc.filter(id=row.id).update(published_at=self.clock())
        if self.published_total is not None:
            self.published_total.inc()
        return None

    # -- computing ----------------------------------------------------------------------------

    async def _inputs(self, terminal_ids: Sequence[str] | None = None) -> _Inputs:
        layers = {
            (str(scope), str(key)): dict(layer)
            for scope, key, layer in await ConfigLayer.all().values_list("scope", "key", "layer")
        }
        assignments: dict[tuple[str, str], dict[str, int | None]] = {}
        for tid, scope, key, version in await TemplateAssignment.all().values_list(
            "template_id", "scope", "key", "version"
        ):
            assignments.setdefault((str(scope), str(key)), {})[tid] = version
        latest = {
            str(t): int(v)
            for t, v in await TemplateVersion.annotate(top=Max("version"))
            .group_by("template_id")
            .values_list("template_id", "top")
        }
        inputs = _Inputs(layers, assignments, latest)
        if self.agent_targets is not None:
            inputs.agents = await self.agent_targets(terminal_ids)
        wanted = {
            (tid, v if v is not None else latest.get(tid, 0))
            for pins in assignments.values()
            for tid, v in pins.items()
        }
        if wanted:
            rows = await TemplateVersion.filter(
                template_id__in=sorted({t for t, _ in wanted}),
                version__in=sorted({v for _, v in wanted}),
            ).values_list("template_id", "version", "content")
            inputs.contents = {(t, v): c for t, v, c in rows if (t, v) in wanted}
        return inputs

    def _stack(self, t: Terminal, inputs: _Inputs) -> list[tuple[str, Mapping[str, Any]]]:
        """The terminal's layers, lowest first, named (layers.layers_of)."""
        return layers_of(
            self.models.get(t.model),
            inputs.layers.get((LayerScope.SITE.value, t.site_id), {}),
            inputs.layers.get((LayerScope.TERMINAL.value, t.id), {}),
            fleet_layer=inputs.layers.get((LayerScope.DEFAULT.value, ""), {}),
            model_layer=inputs.layers.get((LayerScope.MODEL.value, t.model), {}),
        )

    async def sources(self, terminal: Terminal) -> dict[str, str]:
        """Which layer each value of the terminal's configuration comes from."""
        return explain(self._stack(terminal, await self._inputs([terminal.id])))

    async def overridden(
        self, scope: LayerScope, key: str, layer: Mapping[str, Any]
    ) -> dict[str, dict[str, int]]:
        """For each value `layer` sets: how many of the terminals it reaches take it from a
        layer above it instead, by that layer ({"status_interval_s": {"model file": 3}})."""
        paths = leaf_paths(layer)
        ids = await affected_terminals(scope, key)
        if not paths or not ids:
            return {}
        inputs = await self._inputs(ids)
        mine = {
            LayerScope.DEFAULT: "defaults",
            LayerScope.MODEL: "model",
            LayerScope.SITE: "site",
            LayerScope.TERMINAL: "terminal",
        }[scope]
        out: dict[str, dict[str, int]] = {}
        for t in await Terminal.filter(id__in=ids):
            sources = explain(self._stack(t, inputs))
            for path in paths:
                decided_by = sources.get(path)
                if decided_by is not None and decided_by != mine:
                    by = out.setdefault(path, {})
                    by[decided_by] = by.get(decided_by, 0) + 1
        return out

    def _content(self, t: Terminal, inputs: _Inputs) -> dict[str, Any]:
        config = merge(*(layer for _, layer in self._stack(t, inputs)))
        check_config(config)
        pins = dict(inputs.assignments.get((AssignmentScope.SITE.value, t.site_id), {}))
        pins.update(inputs.assignments.get((AssignmentScope.TERMINAL.value, t.id), {}))
        templates = []
        for tid in sorted(pins):
            version = pins[tid] if pins[tid] is not None else inputs.latest.get(tid)
            body = inputs.contents.get((tid, version)) if version is not None else None
            if version is None or body is None:
                raise DocumentError(f"templates.{tid}", f"version {version} does not exist")
            templates.append(template_entry(tid, version, body))
        content: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "terminal": t.id,
            "config": config,
            "templates": templates,
            "agent": _agent(inputs.agents.get(t.id)),
        }
        if MODEL_ID.fullmatch(t.model):
            content["model"] = t.model
        # Round-trip through JSON so the comparison with a stored document compares like types.
        result: dict[str, Any] = json.loads(canonical(content))
        return result


def _agent(version: str | None) -> dict[str, str] | None:
    return {"version": version} if version is not None else None


async def affected_terminals(scope: LayerScope, key: str) -> list[str]:
    """The terminals a layer reaches."""
    query = Terminal.all()
    if scope == LayerScope.MODEL:
        query = query.filter(model=key)
    elif scope == LayerScope.SITE:
        query = query.filter(site_id=key)
    elif scope == LayerScope.TERMINAL:
        query = query.filter(id=key)
    return [str(t) for t in await query.values_list("id", flat=True)]


async def _terminals_of(scoped: Iterable[tuple[Any, Any]]) -> list[str]:
    pairs = list(scoped)
    sites = sorted({str(k) for s, k in pairs if str(s) == AssignmentScope.SITE.value})
    ids = {str(k) for s, k in pairs if str(s) == AssignmentScope.TERMINAL.value}
    if sites:
        ids |= {
            str(t) for t in await Terminal.filter(site_id__in=sites).values_list("id", flat=True)
        }
    return sorted(ids)


async def _latest_ids(query: Any) -> list[int]:
    """Ids of the latest document of each terminal in `query` (a DesiredDoc queryset)."""
    tops = (
        await query.annotate(top=Max("version"))
        .group_by("terminal_id")
        .values_list("terminal_id", "top")
    )
    if not tops:
        return []
    wanted = {(str(t), int(v)) for t, v in tops}
    rows = await DesiredDoc.filter(
        terminal_id__in=sorted({t for t, _ in wanted}),
        version__in=sorted({v for _, v in wanted}),
    ).values_list("id", "terminal_id", "version")
    return [int(i) for i, t, v in rows if (str(t), int(v)) in wanted]
