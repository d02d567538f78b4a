"""The issuer as a route dependency: loaded from the settings on first use, then kept."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, status

from fleet.server.api.deps import Ctx
from fleet.server.licences.keys import Issuer, IssuerKeyError, load_issuer


def get_issuer(ctx: Ctx) -> Issuer:
    """`ctx.issuer`, loading it first; 503 when the issuing key is missing or unreadable."""
    if ctx.issuer is None:
        try:
            ctx.issuer = load_issuer(ctx.settings)
        except IssuerKeyError as e:
            raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(e)) from None
    return ctx.issuer


IssuerDep = Annotated[Issuer, Depends(get_issuer)]
