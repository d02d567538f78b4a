"""Issuing licences (sign, store, return the QR), finding them, revoking one, and the printable
A4 PDF. Operators and admins issue and read; only admins revoke."""

from __future__ import annotations

import asyncio
import base64
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Response, status

from fleet.server.api.auth import Principal
from fleet.server.api.deps import CONFIG_WRITE_ROLES, Ctx, FleetReader, FleetWriter, require_role
from fleet.server.api.errors import invalid
from fleet.server.api.licence_issuer import IssuerDep
from fleet.server.api.licence_schemas import (
    LicenceCreate,
    LicenceIssued,
    LicencePublic,
    RevokeBody,
)
from fleet.server.api.params import Limit, Offset, Serial, TerminalFilter
from fleet.server.api.schemas import UNAVAILABLE, ErrorBody, Page
from fleet.server.db.models import Licence, Terminal
from fleet.server.licences import service
from fleet.server.licences.pdf import FontMissing, render_licence_pdf

router = APIRouter(prefix="/licences", tags=["licences"])

#: Revoking is for admins, like changing configuration.
Revoker = Annotated[Principal, Depends(require_role(CONFIG_WRITE_ROLES))]
_TAKEN: dict[int | str, dict[str, Any]] = {
    409: {"model": ErrorBody, "description": "the serial is taken"}
}
_PDF: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/pdf": {}}, "description": "A4 licence"}
}


async def _get(serial: str) -> Licence:
    row = await Licence.get_or_none(serial=serial.lower())
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such licence")
    return row


@router.post(
    "",
    response_model=LicenceIssued,
    status_code=status.HTTP_201_CREATED,
    responses=_TAKEN | UNAVAILABLE,
)
async def issue_licence(
    body: LicenceCreate, ctx: Ctx, who: FleetWriter, issuer: IssuerDep
) -> LicenceIssued:
    """Sign and store a licence; returns its LIC1 text and QR code (SVG and PNG).

    rust_core judges what the schema cannot: the USCC's check character, that `est` is a real
    date and `exp` after now, and that field 9 (the terminal) is there: a 422 naming it."""
    lic = body.lic_claims()
    if body.terminal is not None:
        if not await Terminal.exists(id=body.terminal):
            raise invalid(("body", "terminal"), "no such terminal", body.terminal)
        lic.setdefault(9, body.terminal)
    serial = bytes.fromhex(body.cti) if body.cti is not None else None
    if serial is not None and await Licence.exists(serial=serial.hex()):
        raise HTTPException(status.HTTP_409_CONFLICT, f"serial {serial.hex()} is taken")
    try:
        issued = await service.issue(
            issuer,
            lic,
            now=ctx.clock(),
            issued_by=who.name,
            terminal_id=body.terminal,
            exp=body.exp,
            serial=serial,
        )
    except service.ClaimsRefused as e:
        raise invalid(("body", *e.loc), str(e)) from None
    except service.SerialTaken as e:
        raise HTTPException(status.HTTP_409_CONFLICT, f"serial {e} is taken") from None
    row = issued.licence
    return LicenceIssued(
        serial=row.serial,
        text=row.text,
        qr_svg=issued.qr_svg,
        qr_png_base64=base64.b64encode(issued.qr_png).decode(),
        issued_at=row.issued_at,
    )


@router.get("", response_model=Page[LicencePublic])
async def list_licences(
    _: FleetReader,
    limit: Limit = 50,
    offset: Offset = 0,
    terminal: TerminalFilter = None,
    revoked: bool | None = None,
) -> Page[LicencePublic]:
    """Issued licences, newest first; filter by terminal or revocation."""
    query = Licence.all()
    if terminal is not None:
        query = query.filter(terminal_id=terminal)
    if revoked is not None:
        query = query.filter(revoked_at__isnull=not revoked)
    total = await query.count()
    rows = await query.order_by("-issued_at", "-id").offset(offset).limit(limit)
    items = [LicencePublic.of(r) for r in rows]
    return Page[LicencePublic](items=items, total=total, limit=limit, offset=offset)


@router.get("/{serial}", response_model=LicencePublic)
async def get_licence(
    serial: Serial,
    _: FleetReader,
    qr: Annotated[bool, Query(description="also return the QR code (SVG, PNG)")] = False,
) -> LicencePublic:
    """One licence by serial (32 hex digits)."""
    return LicencePublic.of(await _get(serial), qr=qr)


@router.post("/{serial}/revoke", response_model=LicencePublic)
async def revoke_licence(serial: Serial, body: RevokeBody, ctx: Ctx, who: Revoker) -> LicencePublic:
    """Revoke a licence; revoking it again keeps the first time and reason."""
    row = await service.revoke(serial.lower(), body.reason, who.name, ctx.clock())
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such licence")
    return LicencePublic.of(row)


@router.get(
    "/{serial}/pdf",
    response_class=Response,
    responses=_PDF | UNAVAILABLE,
)
async def licence_pdf(serial: Serial, ctx: Ctx, _: FleetReader) -> Response:
    """The printable A4 licence (PDF) with its QR code."""
    row = await _get(serial)
    settings = ctx.settings
    try:
        data = await asyncio.to_thread(
            render_licence_pdf,
            row.text,
            row.claims,
            authority_name=settings.issuer_authority_name,
            font=settings.licence_font_file,
            timezone=settings.service_timezone,
        )
    except FontMissing as e:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(e)) from None
    return Response(
        data,
        media_type="application/pdf",
        headers={"Content-Disposition": f'inline; filename="licence-{row.serial}.pdf"'},
    )
