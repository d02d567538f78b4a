"""The fleet server's tables (Tortoise ORM). The same models and migrations serve SQLite and
PostgreSQL; nothing here may rely on one backend's features.

Times are stored timezone-aware in UTC. History tables use 64-bit ids: a fleet of 1,000
terminals reporting every 30 s writes about a billion samples in a year.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from tortoise import fields
from tortoise.models import Model
from tortoise.validators import RegexValidator

# The first line of a model docstring must not contain ";": Tortoise 1.1 copies it into a
# table comment, and its SQLite migrations then split the CREATE TABLE there.

#: DESIGN.md's terminal id: also an MQTT topic level and a broker user name.
TERMINAL_ID_RE = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


class SiteKind(StrEnum):
    HALL = "hall"
    STREET = "street"
    COMMUNITY = "community"


class PresenceReason(StrEnum):
    CLEAN = "clean"  # the agent published online:false itself
    WILL = "will"  # the broker published the agent's Last Will
    TIMEOUT = "timeout"  # no report for heartbeat_intervals status intervals


class Role(StrEnum):
    OPERATOR = "operator"
    AUDITOR = "auditor"
    ADMIN = "admin"


class Site(Model):
    id = fields.CharField(primary_key=True, max_length=64)
    name = fields.CharField(max_length=200)
    kind = fields.CharEnumField(SiteKind, max_length=16)

    terminals: fields.ReverseRelation[Terminal]

    class Meta:
        table = "site"


class Terminal(Model):
    """A registered kiosk, with its latest state copied in so the fleet list is one query."""

    id = fields.CharField(
        primary_key=True, max_length=64, validators=[RegexValidator(TERMINAL_ID_RE, re.ASCII)]
    )
    site: fields.ForeignKeyRelation[Site] = fields.ForeignKeyField(
        "fleet.Site", related_name="terminals", on_delete=fields.RESTRICT
    )
    site_id: str
    model = fields.CharField(max_length=64)  # hardware model, a firmware_configs/ name
    tags = fields.JSONField[list[str]](default=list)
    created_at = fields.DatetimeField(auto_now_add=True)
    mqtt_username = fields.CharField(max_length=64, unique=True)

    online = fields.BooleanField(default=False)
    presence_reason = fields.CharEnumField(PresenceReason, max_length=16, null=True)
    presence_changed_at = fields.DatetimeField(null=True)
    last_seen = fields.DatetimeField(null=True)
    last_seq = fields.BigIntField(null=True)
    agent_version = fields.CharField(max_length=32, null=True)
    printer_state = fields.CharField(max_length=16, null=True)
    paper_pct = fields.SmallIntField(null=True)
    reader_state = fields.CharField(max_length=16, null=True)
    status = fields.JSONField[dict[str, object]](null=True)  # the last full report

    class Meta:
        table = "terminal"


class StatusSample(Model):
    """One status report kept for history. Older samples are thinned out (downsampled)."""

    id = fields.BigIntField(primary_key=True)
    terminal: fields.ForeignKeyRelation[Terminal] = fields.ForeignKeyField(
        "fleet.Terminal", related_name="samples", on_delete=fields.CASCADE
    )
    terminal_id: str
    seq = fields.BigIntField()
    ts = fields.DatetimeField()  # the agent's clock
    received_at = fields.DatetimeField()  # ours: lag = received_at - ts
    paper_pct = fields.SmallIntField(null=True)
    printer_state = fields.CharField(max_length=16, null=True)
    reasons = fields.JSONField[list[str]](default=list)
    reader_state = fields.CharField(max_length=16, null=True)
    toner_pct = fields.SmallIntField(null=True)
    downsampled = fields.BooleanField(default=False)

    class Meta:
        table = "status_sample"
        # The duplicate check at the database: a redelivered QoS 1 report cannot be stored twice.
        unique_together = (("terminal", "seq"),)
        # History by range for one terminal, and retention/downsampling by age for all.
        indexes = (("terminal_id", "ts"), ("ts",))


class SeqGap(Model):
    """Reports the server never received: `after_seq` arrived, then `before_seq`."""

    id = fields.BigIntField(primary_key=True)
    terminal: fields.ForeignKeyRelation[Terminal] = fields.ForeignKeyField(
        "fleet.Terminal", related_name="seq_gaps", on_delete=fields.CASCADE
    )
    terminal_id: str
    after_seq = fields.BigIntField()
    before_seq = fields.BigIntField()
    detected_at = fields.DatetimeField(auto_now_add=True)

    class Meta:
        table = "seq_gap"
        indexes = (("terminal_id", "detected_at"),)


class TerminalEvent(Model):
    id = fields.BigIntField(primary_key=True)
    terminal: fields.ForeignKeyRelation[Terminal] = fields.ForeignKeyField(
        "fleet.Terminal", related_name="events", on_delete=fields.CASCADE
    )
    terminal_id: str
    seq = fields.BigIntField()
    kind = fields.CharField(max_length=32)
    ts = fields.DatetimeField()
    data = fields.JSONField[dict[str, object]](default=dict)

    class Meta:
        table = "terminal_event"
        unique_together = (("terminal", "seq"),)
        indexes = (("terminal_id", "ts"),)


class Alert(Model):
    """An alert, open or cleared (cleared ones are the history).

    `active_key` is 1 while the alert is open and NULL once cleared. With the unique
    (terminal, rule, active_key) constraint the database itself allows one open alert per
    (terminal, rule) however many ingest workers race, and any number of cleared ones, since
    NULLs are distinct in unique constraints on SQLite and PostgreSQL alike. A partial unique
    index would say the same, but Tortoise's migrations only emit those for PostgreSQL.
    """

    id = fields.BigIntField(primary_key=True)
    terminal: fields.ForeignKeyRelation[Terminal] = fields.ForeignKeyField(
        "fleet.Terminal", related_name="alerts", on_delete=fields.CASCADE
    )
    terminal_id: str
    rule = fields.CharField(max_length=32)
    severity = fields.CharField(max_length=16)
    opened_at = fields.DatetimeField()
    cleared_at = fields.DatetimeField(null=True)
    acked_at = fields.DatetimeField(null=True)
    acked_by = fields.CharField(max_length=100, null=True)
    detail = fields.TextField(default="")
    active_key = fields.SmallIntField(null=True, default=1)

    class Meta:
        table = "alert"
        unique_together = (("terminal", "rule", "active_key"),)
        indexes = (("active_key", "rule"), ("opened_at",))


class DeadLetter(Model):
    """A rejected MQTT message, kept (bounded per terminal, truncated) so operators can see why."""

    id = fields.BigIntField(primary_key=True)
    received_at = fields.DatetimeField()
    topic = fields.CharField(max_length=255)
    reason = fields.CharField(max_length=255)
    payload = fields.TextField()
    #: The terminal the topic names (None when it names none): the bound is per terminal, so
    #: one terminal's flood cannot erase what others sent.
    terminal = fields.CharField(max_length=64, null=True)

    class Meta:
        table = "dead_letter"
        indexes = (("terminal", "id"),)


class ApiToken(Model):
    """A bearer token for the REST API. Only the SHA-256 of the token is stored."""

    id = fields.IntField(primary_key=True)
    name = fields.CharField(max_length=100)
    role = fields.CharEnumField(Role, max_length=16)
    token_sha256 = fields.CharField(max_length=64, unique=True)
    created_at = fields.DatetimeField(auto_now_add=True)
    revoked_at = fields.DatetimeField(null=True)
    last_used_at = fields.DatetimeField(null=True)

    class Meta:
        table = "api_token"


# --- desired state (issue 5) -------------------------------------------------------------------


class LayerScope(StrEnum):
    DEFAULT = "default"
    MODEL = "model"
    SITE = "site"
    TERMINAL = "terminal"


class AssignmentScope(StrEnum):
    SITE = "site"
    TERMINAL = "terminal"


class CommandStatus(StrEnum):
    PENDING = "pending"  # stored, not yet acknowledged by the broker
    SENT = "sent"  # the broker took it (PUBACK)
    OK = "ok"
    FAILED = "failed"
    EXPIRED = "expired"
    REJECTED = "rejected"


class ConfigLayer(Model):
    """One configuration layer, a partial config merged over the ones below it.

    `key` is the model id, site id or terminal id, and "" for the default layer.
    """

    id = fields.IntField(primary_key=True)
    scope = fields.CharEnumField(LayerScope, max_length=16)
    key = fields.CharField(max_length=64, default="")
    layer = fields.JSONField[dict[str, object]](default=dict)
    updated_at = fields.DatetimeField()
    updated_by = fields.CharField(max_length=100, default="")

    class Meta:
        table = "config_layer"
        unique_together = (("scope", "key"),)


class DesiredDoc(Model):
    """A signed desired-state document of one terminal, kept as history.

    `payload` is the canonical JSON exactly as signed, `envelope` the MQTT message. The unique
    (terminal, version) is what makes two concurrent changes unable to share a version.
    """

    id = fields.BigIntField(primary_key=True)
    terminal: fields.ForeignKeyRelation[Terminal] = fields.ForeignKeyField(
        "fleet.Terminal", related_name="desired_docs", on_delete=fields.CASCADE
    )
    terminal_id: str
    version = fields.BigIntField()
    hash = fields.CharField(max_length=71)
    payload = fields.TextField()
    envelope = fields.TextField()
    created_at = fields.DatetimeField()
    reason = fields.CharField(max_length=200, default="")
    #: When the broker last took it (PUBACK), null while it was never delivered to the broker.
    published_at = fields.DatetimeField(null=True)

    class Meta:
        table = "desired_doc"
        unique_together = (("terminal", "version"),)


class Template(Model):
    """A form template (JSON Schema plus layout), versioned in TemplateVersion."""

    id = fields.CharField(primary_key=True, max_length=64)
    created_at = fields.DatetimeField()

    versions: fields.ReverseRelation[TemplateVersion]

    class Meta:
        table = "template"


class TemplateVersion(Model):
    id = fields.IntField(primary_key=True)
    template: fields.ForeignKeyRelation[Template] = fields.ForeignKeyField(
        "fleet.Template", related_name="versions", on_delete=fields.CASCADE
    )
    template_id: str
    version = fields.IntField()
    content = fields.JSONField[dict[str, object]]()
    sha256 = fields.CharField(max_length=64, db_index=True)
    size = fields.IntField()
    created_at = fields.DatetimeField()
    created_by = fields.CharField(max_length=100, default="")

    class Meta:
        table = "template_version"
        unique_together = (("template", "version"),)


class TemplateAssignment(Model):
    """A template given to a site or a terminal, at a pinned version or (null) the latest."""

    id = fields.IntField(primary_key=True)
    template: fields.ForeignKeyRelation[Template] = fields.ForeignKeyField(
        "fleet.Template", related_name="assignments", on_delete=fields.CASCADE
    )
    template_id: str
    scope = fields.CharEnumField(AssignmentScope, max_length=16)
    key = fields.CharField(max_length=64)
    version = fields.IntField(null=True)

    class Meta:
        table = "template_assignment"
        unique_together = (("template", "scope", "key"),)
        indexes = (("scope", "key"),)


class TerminalReported(Model):
    """The last `reported` message of a terminal: what it did with a document, what it runs."""

    id = fields.IntField(primary_key=True)
    terminal: fields.OneToOneRelation[Terminal] = fields.OneToOneField(
        "fleet.Terminal", related_name="reported", on_delete=fields.CASCADE
    )
    terminal_id: str
    version = fields.BigIntField(null=True)
    hash = fields.CharField(max_length=71, null=True)
    result = fields.CharField(max_length=16)
    error = fields.TextField(null=True)
    applied_version = fields.BigIntField(null=True)
    applied_hash = fields.CharField(max_length=71, null=True)
    ts = fields.DatetimeField()  # the agent's clock
    updated_at = fields.DatetimeField()

    class Meta:
        table = "terminal_reported"


class Command(Model):
    """A remote command to one terminal and, once it answers, its result."""

    id = fields.UUIDField(primary_key=True)
    terminal: fields.ForeignKeyRelation[Terminal] = fields.ForeignKeyField(
        "fleet.Terminal", related_name="commands", on_delete=fields.CASCADE
    )
    terminal_id: str
    name = fields.CharField(max_length=32)
    args = fields.JSONField[dict[str, object]](default=dict)
    issued_at = fields.DatetimeField()
    expires_at = fields.DatetimeField()
    issued_by = fields.CharField(max_length=100, default="")
    status = fields.CharEnumField(CommandStatus, max_length=16, default=CommandStatus.PENDING)
    detail = fields.TextField(default="")
    result_at = fields.DatetimeField(null=True)

    class Meta:
        table = "command"
        indexes = (("terminal_id", "issued_at"),)


# --- licences (issue 7) ------------------------------------------------------------------------


class Licence(Model):
    """An issued (signed) business licence, as printed: the LIC1 text and the claims in it.

    `serial` is the claims' `cti` as 32 hex digits, the revocation key. `claims` is the JSON
    form (`fleet.licence_claims.claims_to_json`); `text` is exactly what the QR code carries.
    A revoked licence keeps its row: the revocation list is every row with `revoked_at` set.
    """

    id = fields.BigIntField(primary_key=True)
    serial = fields.CharField(max_length=32, unique=True)
    claims = fields.JSONField[dict[str, Any]]()
    text = fields.TextField()
    terminal: fields.ForeignKeyNullableRelation[Terminal] = fields.ForeignKeyField(
        "fleet.Terminal", related_name="licences", on_delete=fields.SET_NULL, null=True
    )
    terminal_id: str | None
    issued_at = fields.DatetimeField()
    issued_by = fields.CharField(max_length=100, default="")
    revoked_at = fields.DatetimeField(null=True)
    revoke_reason = fields.TextField(null=True)
    revoked_by = fields.CharField(max_length=100, null=True)

    class Meta:
        table = "licence"
        indexes = (("issued_at",), ("revoked_at",))


# --- rollouts (issue 6) ------------------------------------------------------------------------


class RolloutState(StrEnum):
    PENDING = "pending"  # created, no wave started yet (e.g. waiting for the maintenance window)
    RUNNING = "running"
    PAUSED = "paused"
    ABORTED = "aborted"
    COMPLETED = "completed"


#: A terminal may be in at most one rollout in these states.
ACTIVE_ROLLOUT_STATES = (RolloutState.PENDING, RolloutState.RUNNING, RolloutState.PAUSED)


class FailureAction(StrEnum):
    PAUSE = "pause"
    ABORT = "abort"


class UpdateState(StrEnum):
    """A terminal's progress in a rollout."""

    PENDING = "pending"
    DOWNLOADING = "downloading"
    INSTALLING = "installing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ROLLED_BACK = "rolled_back"
    TIMED_OUT = "timed_out"


class Rollout(Model):
    """A staged rollout of one agent version to a set of terminals, wave by wave.

    `target` is the selection as asked ({sites, models, tags, terminals}), `waves` the wave spec
    as asked (cumulative counts or "N%"), `window` the maintenance window {start, end, tz} in
    which new waves may start (null: outside the settings' service hours). `current_wave` is the
    index of the last started wave, -1 before the first. Resuming a paused rollout accepts what
    went wrong so far: `failure_baseline` is the failure count then (the limits count only later
    failures) and `accepted_wave` the wave whose result no longer has to reach the threshold.
    """

    id = fields.IntField(primary_key=True)
    version = fields.CharField(max_length=64)
    target = fields.JSONField[dict[str, list[str]]]()
    waves = fields.JSONField[list[int | str]]()
    success_threshold = fields.FloatField(default=1.0)
    max_failures = fields.IntField(null=True)
    max_failure_pct = fields.FloatField(null=True)
    failure_action = fields.CharEnumField(FailureAction, max_length=8, default=FailureAction.PAUSE)
    per_terminal_timeout_s = fields.IntField(default=3600)
    window = fields.JSONField[dict[str, str]](null=True)
    override_window = fields.BooleanField(default=False)
    state = fields.CharEnumField(RolloutState, max_length=16, default=RolloutState.PENDING)
    current_wave = fields.IntField(default=-1)
    failure_baseline = fields.IntField(default=0)
    accepted_wave = fields.IntField(default=-1)
    created_by = fields.CharField(max_length=100, default="")
    created_at = fields.DatetimeField()
    updated_at = fields.DatetimeField()
    started_at = fields.DatetimeField(null=True)
    finished_at = fields.DatetimeField(null=True)
    reason = fields.TextField(default="")

    terminals: fields.ReverseRelation[RolloutTerminal]

    class Meta:
        table = "rollout"
        indexes = (("state",),)


class RolloutTerminal(Model):
    """One terminal of a rollout: its wave, its update state and why.

    `started_at` is set when its wave starts (from then on its desired-state document carries the
    rollout's version). `position` is its place in the plan's deterministic order.
    """

    id = fields.BigIntField(primary_key=True)
    rollout: fields.ForeignKeyRelation[Rollout] = fields.ForeignKeyField(
        "fleet.Rollout", related_name="terminals", on_delete=fields.CASCADE
    )
    rollout_id: int
    terminal: fields.ForeignKeyRelation[Terminal] = fields.ForeignKeyField(
        "fleet.Terminal", related_name="rollouts", on_delete=fields.CASCADE
    )
    terminal_id: str
    wave = fields.SmallIntField()
    position = fields.IntField()
    state = fields.CharEnumField(UpdateState, max_length=16, default=UpdateState.PENDING)
    reason = fields.TextField(default="")
    started_at = fields.DatetimeField(null=True)
    updated_at = fields.DatetimeField()

    class Meta:
        table = "rollout_terminal"
        unique_together = (("rollout", "terminal"),)
        indexes = (("terminal_id", "state"),)


class InboxMessage(Model):
    """An MQTT message a replica took off the broker and has not yet been handled (replicas only).

    With several `fleet serve` on one database every replica relays what the shared subscription
    hands it into this table and acknowledges it; the one replica holding the ingest lease
    handles the rows in id order and deletes them (fleet/server/ingest/inbox.py). So each
    terminal's state is decided by one writer, however the broker spread its messages.
    """

    id = fields.BigIntField(primary_key=True)
    #: time.time() at the relay: the start of the ingest lag.
    received_at = fields.FloatField()
    topic = fields.TextField()
    payload = fields.BinaryField()
    #: Why the relay's receiver could not take it as a message (dead-lettered when handled).
    refused = fields.TextField(null=True)

    class Meta:
        table = "ingest_inbox"


class Lease(Model):
    """Who runs a singleton (the ingest's state, timers, jobs) among replicas, and until when.

    Renewed by its holder well before `expires_at` (the database's clock decides); taken over by
    another replica only once it has expired (fleet/server/lease.py)."""

    name = fields.CharField(max_length=64, primary_key=True)
    holder = fields.CharField(max_length=200)
    expires_at = fields.DatetimeField()

    class Meta:
        table = "lease"


class Replica(Model):
    """A `fleet serve` replica, as its heartbeat last said (replicas only).

    Every replica writes its row every few seconds. A replica whose row has gone stale is gone
    (killed, its host lost): the broker still hands its session a share of the terminals'
    messages, so the lease holder retires that session (fleet/server/ingest/retire.py) and the
    share goes to the replicas that are left."""

    id = fields.CharField(max_length=64, primary_key=True)
    holder = fields.CharField(max_length=200)
    seen_at = fields.DatetimeField()

    class Meta:
        table = "replica"
