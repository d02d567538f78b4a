"""Form templates: versions, assignments to sites and terminals, and content-addressed blobs.

Operators and admins read; only admins create versions and change assignments. A new version
reaches the terminals that follow the template's latest version; changing assignments recomputes
every terminal that gains or loses the template. Both answer with per-terminal results.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Response, status
from pydantic import WithJsonSchema

from agent.desired.document import MAX_TEMPLATE_BYTES, canonical
from fleet.server.api.deps import ConfigWriter, Ctx, FleetReader
from fleet.server.api.desired_schemas import (
    TEMPLATE_CONTENT_SCHEMA,
    Assignments,
    AssignmentsPut,
    Results,
    TemplatePublic,
    TemplatePut,
    TemplateVersionPublic,
)
from fleet.server.api.errors import invalid, loc_of
from fleet.server.api.params import Sha256, TemplateId, TemplateVersionNo
from fleet.server.api.routes.config import service
from fleet.server.api.schemas import UNAVAILABLE
from fleet.server.db.models import (
    AssignmentScope,
    Site,
    Template,
    TemplateAssignment,
    TemplateVersion,
    Terminal,
)
from fleet.server.desired.service import TemplateError

router = APIRouter(prefix="/templates", tags=["templates"])

#: A template PUT's body, refused unread past it (api/body_limit.py). The size limit is on the
#: canonical bytes (compact, UTF-8); the largest template sent indented or with `\uXXXX` escapes
#: (6 bytes where UTF-8 takes 3) still fits in four times that.
MAX_TEMPLATE_BODY_BYTES = 4 * MAX_TEMPLATE_BYTES


@router.get(
    "/blobs/{sha256}",
    response_class=Response,
    responses={200: {"content": {"application/json": {}}}},
)
async def get_blob(sha256: Sha256) -> Response:
    """A template version's canonical bytes by their SHA-256. No token needed, by design.

    An agent fetches a template too large to travel inline in its document from here. The
    address is the content's hash, which the agent took from a document signed by the fleet's
    config key and checks the bytes against, so nothing served here can be forged or swapped;
    and a template is a citizen-facing form, no secret. Requiring a token would mean giving
    every kiosk an API token for no gain. Someone who does not know a hash learns nothing.
    """
    row = await TemplateVersion.filter(sha256=sha256).first()
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such template content")
    return Response(
        canonical(row.content),
        media_type="application/json",
        headers={"Cache-Control": "public, max-age=31536000, immutable"},
    )


@router.get("/{template_id}", response_model=TemplatePublic)
async def get_template(template_id: TemplateId, _: FleetReader) -> TemplatePublic:
    """The template's latest version, its version numbers and its assignments."""
    versions = await TemplateVersion.filter(template_id=template_id).order_by("-version")
    if not versions:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such template")
    return TemplatePublic(
        id=template_id,
        latest=TemplateVersionPublic.of(versions[0]),
        versions=[v.version for v in versions],
        assignments=await _assignments(template_id),
    )


@router.put("/{template_id}", response_model=TemplatePut, responses=UNAVAILABLE)
async def put_template(
    template_id: TemplateId,
    ctx: Ctx,
    who: ConfigWriter,
    content: Annotated[dict[str, Any], WithJsonSchema(TEMPLATE_CONTENT_SCHEMA), Body()],
) -> TemplatePut:
    """Store a new version (none if the content equals the latest) and push it."""
    try:
        row, created, outcomes = await service(ctx).put_template(template_id, content, who.name)
    except TemplateError as e:
        raise invalid(("body", *loc_of(e.path)), str(e)) from None
    results = Results.of(outcomes)
    return TemplatePut(
        template=TemplateVersionPublic.of(row), created=created, **results.model_dump()
    )


@router.get("/{template_id}/versions/{version}", response_model=TemplateVersionPublic)
async def get_version(
    template_id: TemplateId, version: TemplateVersionNo, _: FleetReader
) -> TemplateVersionPublic:
    row = await TemplateVersion.get_or_none(template_id=template_id, version=version)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such template version")
    return TemplateVersionPublic.of(row)


@router.put("/{template_id}/assignments", response_model=AssignmentsPut, responses=UNAVAILABLE)
async def put_assignments(
    template_id: TemplateId, body: Assignments, ctx: Ctx, _: ConfigWriter
) -> AssignmentsPut:
    """Replace which sites and terminals get the template (pinned or latest) and push."""
    if not await Template.exists(id=template_id):
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such template")
    sites, terminals = body.pins()
    await _check_targets(template_id, sites, terminals)
    outcomes = await service(ctx).set_assignments(template_id, sites, terminals)
    results = Results.of(outcomes)
    return AssignmentsPut(assignments=await _assignments(template_id), **results.model_dump())


async def _check_targets(
    template_id: str, sites: dict[str, int | None], terminals: dict[str, int | None]
) -> None:
    def refuse(where: str, key: str, problem: str) -> Exception:
        return invalid(("body", where, key), f"{where}.{key}: {problem}")

    known_sites: set[Any] = set(await Site.filter(id__in=list(sites)).values_list("id", flat=True))
    for s in sites:
        if s not in known_sites:
            raise refuse("sites", s, "no such site")
    known_terms: set[Any] = set(
        await Terminal.filter(id__in=list(terminals)).values_list("id", flat=True)
    )
    for t in terminals:
        if t not in known_terms:
            raise refuse("terminals", t, "no such terminal")
    versions: set[Any] = set(
        await TemplateVersion.filter(template_id=template_id).values_list("version", flat=True)
    )
    for where, pins in (("sites", sites), ("terminals", terminals)):
        for key, v in pins.items():
            if v is not None and v not in versions:
                raise refuse(where, key, f"the template has no version {v}")


async def _assignments(template_id: str) -> Assignments:
    rows = await TemplateAssignment.filter(template_id=template_id).order_by("scope", "key")
    sites = {a.key: a.version for a in rows if a.scope == AssignmentScope.SITE}
    terminals = {a.key: a.version for a in rows if a.scope == AssignmentScope.TERMINAL}
    return Assignments(sites=sites, terminals=terminals)
