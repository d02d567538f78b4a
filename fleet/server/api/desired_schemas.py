"""Bodies of the desired-state routes: configuration layers, documents, templates, commands."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from fleet.server.api.params import (
    JSON_NUMBER,
    MAX_INT32,
    MAX_SAFE_INT,
    JsonInt,
    SiteIdValue,
    TerminalIdValue,
)
from fleet.server.db.models import Command, ConfigLayer, DesiredDoc, TemplateVersion
from fleet.server.desired.drift import DriftState
from fleet.server.desired.service import Outcome


class OutcomePublic(BaseModel):
    """What a change did to one terminal's document."""

    terminal: str
    result: Literal["new", "unchanged", "error"]
    version: int | None
    hash: str | None
    published: bool | None = Field(description="the broker took the latest document")
    error: str | None

    @classmethod
    def of(cls, o: Outcome) -> OutcomePublic:
        return cls(
            terminal=o.terminal,
            result=o.result,
            version=o.version,
            hash=o.hash,
            published=o.published,
            error=o.error,
        )


class Results(BaseModel):
    """Per-terminal results of a change, and their tally."""

    results: list[OutcomePublic]
    new: int
    unchanged: int
    errors: int

    @classmethod
    def of(cls, outcomes: list[Outcome]) -> Results:
        return cls(
            results=[OutcomePublic.of(o) for o in outcomes],
            new=sum(o.result == "new" for o in outcomes),
            unchanged=sum(o.result == "unchanged" for o in outcomes),
            errors=sum(o.result == "error" for o in outcomes),
        )


class LayerPublic(BaseModel):
    scope: Literal["default", "model", "site", "terminal"]
    key: str
    layer: dict[str, Any]
    updated_at: datetime | None
    updated_by: str | None
    #: The layer below it that is not in the database: the built-in defaults under `default`,
    #: the hardware model's `[desired]` (firmware_configs/) under `model`.
    base: dict[str, Any] | None = None

    @classmethod
    def of(
        cls, scope: str, key: str, row: ConfigLayer | None, base: dict[str, Any] | None = None
    ) -> LayerPublic:
        return cls.model_validate(
            {
                "scope": scope,
                "key": key,
                "layer": dict(row.layer) if row else {},
                "updated_at": row.updated_at if row else None,
                "updated_by": row.updated_by if row else None,
                "base": base,
            }
        )


class LayerChange(Results):
    layer: LayerPublic
    overridden: dict[str, dict[str, int]] = Field(
        default_factory=dict,
        description="for each value this layer sets that some of the terminals it reaches take "
        'from a layer above it instead: how many, by that layer (e.g. {"status_interval_s": '
        '{"model file": 3}}); empty when the layer decides for all of them',
    )


class DocSummary(BaseModel):
    version: int
    hash: str
    created_at: datetime
    published_at: datetime | None
    reason: str

    @classmethod
    def of(cls, d: DesiredDoc) -> DocSummary:
        return cls(
            version=d.version,
            hash=d.hash,
            created_at=d.created_at,
            published_at=d.published_at,
            reason=d.reason,
        )


class DesiredPublic(BaseModel):
    terminal: str
    version: int | None = Field(description="the latest document's version; null if none yet")
    hash: str | None
    document: dict[str, Any] | None = Field(description="the latest document, as signed")
    computed: dict[str, Any] | None = Field(
        description="what the layers give now (no version/issued_at); null if they do not "
        "make a valid document"
    )
    computed_error: str | None = None
    pending: bool = Field(description="the computed content differs from the latest document")
    sources: dict[str, str] = Field(
        default_factory=dict,
        description="which layer each configuration value comes from, by dotted path: built-in, "
        "defaults, model file, model, site or terminal",
    )
    history: list[DocSummary] = Field(description="newest first")


class RollbackBody(BaseModel):
    version: JsonInt = Field(ge=1, le=MAX_SAFE_INT)


class TemplateVersionPublic(BaseModel):
    id: str
    version: int
    sha256: str
    size: int
    created_at: datetime
    created_by: str
    content: dict[str, Any] | None = None

    @classmethod
    def of(cls, v: TemplateVersion, with_content: bool = True) -> TemplateVersionPublic:
        return cls(
            id=v.template_id,
            version=v.version,
            sha256=v.sha256,
            size=v.size,
            created_at=v.created_at,
            created_by=v.created_by,
            content=dict(v.content) if with_content else None,
        )


#: A template's content as `check_template` (fleet.server.desired.service) takes it; what JSON
#: Schema cannot say (at most 1 MiB as canonical JSON) is left to that check.
TEMPLATE_CONTENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["schema", "layout"],
    "properties": {
        "schema": {
            "type": "object",
            "description": "a JSON Schema of the form's fields",
            "properties": {
                "type": {"const": "object"},
                "properties": {"type": "object", "additionalProperties": {"type": "object"}},
                "required": {"type": "array", "items": {"type": "string"}},
            },
        },
        "layout": {"type": ["array", "object"]},
    },
}

#: A pinned template version (the column is 32 bits), or null for the latest.
Pin = Annotated[int, Field(ge=1, le=MAX_INT32), JSON_NUMBER] | None


class Assignments(BaseModel):
    """Sites and terminals that get the template: id -> pinned version, or null for the latest.
    A list of ids means "the latest" for each."""

    sites: dict[SiteIdValue, Pin] | list[SiteIdValue] = Field(default_factory=dict)
    terminals: dict[TerminalIdValue, Pin] | list[TerminalIdValue] = Field(default_factory=dict)

    def pins(self) -> tuple[dict[str, int | None], dict[str, int | None]]:
        def norm(v: dict[str, int | None] | list[str]) -> dict[str, int | None]:
            return dict(v) if isinstance(v, dict) else dict.fromkeys(v)

        return norm(self.sites), norm(self.terminals)


class TemplatePublic(BaseModel):
    id: str
    latest: TemplateVersionPublic
    versions: list[int]
    assignments: Assignments


class TemplatePut(Results):
    template: TemplateVersionPublic
    created: bool = Field(description="false: the content equals the latest version already")


class AssignmentsPut(Results):
    assignments: Assignments


class CommandBody(BaseModel):
    name: Literal["print_test_page", "refresh_status", "restart_agent"]
    args: dict[str, Any] = Field(default_factory=dict)
    ttl_s: JsonInt = Field(default=300, ge=5, le=86_400, description="seconds until it expires")


class CommandPublic(BaseModel):
    id: str
    terminal: str
    name: str
    args: dict[str, Any]
    issued_at: datetime
    expires_at: datetime
    issued_by: str
    status: Literal["pending", "sent", "ok", "failed", "expired", "rejected"]
    detail: str
    result_at: datetime | None

    @classmethod
    def of(cls, c: Command) -> CommandPublic:
        return cls.model_validate(
            {
                "id": str(c.id),
                "terminal": c.terminal_id,
                "name": c.name,
                "args": dict(c.args),
                "issued_at": c.issued_at,
                "expires_at": c.expires_at,
                "issued_by": c.issued_by,
                "status": str(c.status),
                "detail": c.detail,
                "result_at": c.result_at,
            }
        )


class DesiredStatePublic(BaseModel):
    """Desired vs reported state of one terminal (in GET /terminals/{id})."""

    desired_version: int | None
    desired_hash: str | None
    desired_at: datetime | None
    reported_version: int | None = Field(description="the document the last `reported` is about")
    reported_hash: str | None
    reported_result: Literal["ok", "refused", "failed"] | None
    reported_error: str | None
    applied_version: int | None = Field(description="what the agent runs")
    applied_hash: str | None
    reported_at: datetime | None
    drift: bool = Field(description="the applied document is not the latest desired one")
    drift_s: float | None = Field(description="seconds since the latest document, while drifting")

    @classmethod
    def of(cls, s: DriftState) -> DesiredStatePublic:
        return cls.model_validate(s, from_attributes=True)
