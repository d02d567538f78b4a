"""What auditors use: verify LIC1 texts or scanned images against the server's trust store,
and download the trust and revocation lists for offline checks. Every role may."""

from __future__ import annotations

import asyncio
import json
from typing import Annotated

from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, Response, UploadFile
from fastapi import status as http
from pydantic import ValidationError

import rust_core
from fleet.qr_images import ImageSupportMissing, ImageUnreadable, decode_qr_texts
from fleet.server.api.auth import Principal
from fleet.server.api.deps import Ctx, require_role
from fleet.server.api.licence_issuer import IssuerDep
from fleet.server.api.licence_schemas import (
    MAX_VERIFY_TEXTS,
    ImageCode,
    ImageResult,
    ImagesResponse,
    VerifyBody,
    VerifyResponse,
    VerifyResult,
)
from fleet.server.db.models import Role
from fleet.server.licences import service

router = APIRouter(tags=["verify"])

AnyRole = Annotated[Principal, Depends(require_role(frozenset(Role)))]

#: The largest verify body: every text at its limit. A LIC1 text is ASCII (the Base45 alphabet),
#: so a body bigger than this cannot hold texts any verdict but `malformed` would be given.
MAX_VERIFY_BYTES = MAX_VERIFY_TEXTS * (rust_core.MAX_TEXT_CHARS + 8) + 4096
#: Images in one upload, and bytes in one image (a 600 dpi A4 JPEG scan is ~5-10 MB).
MAX_IMAGES = 50
MAX_IMAGE_BYTES = 20 * 1024 * 1024
TEXT_EXCERPT = 120

Download = Annotated[
    bool, Query(description="send as an attachment (a file to save) instead of inline")
]


def _file(text: str, name: str, download: bool) -> Response:
    disposition = "attachment" if download else "inline"
    return Response(
        text,
        media_type="application/json",
        headers={"Content-Disposition": f'{disposition}; filename="{name}"'},
    )


@router.get(
    "/trust", response_class=Response, responses={200: {"content": {"application/json": {}}}}
)
async def trust_list(_: AnyRole, issuer: IssuerDep, download: Download = False) -> Response:
    """The trust list (issuing keys), exactly as `fleet keys trust-list` writes it."""
    return _file(issuer.trust_list_json(), "trust.json", download)


@router.get(
    "/revoked", response_class=Response, responses={200: {"content": {"application/json": {}}}}
)
async def revocation_list(_: AnyRole, download: Download = False) -> Response:
    """The revocation list, exactly as `fleet revocations` writes it."""
    return _file(await service.revocation_list_json(), "revoked.json", download)


async def _read_limited(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise HTTPException(http.HTTP_413_CONTENT_TOO_LARGE, f"body over {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPException(http.HTTP_413_CONTENT_TOO_LARGE, f"body over {limit} bytes")
    return bytes(body)


@router.post(
    "/verify",
    response_model=VerifyResponse,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": VerifyBody.model_json_schema()}},
        }
    },
    responses={413: {"description": f"more than {MAX_VERIFY_TEXTS} texts"}},
)
async def verify(request: Request, ctx: Ctx, _: AnyRole, issuer: IssuerDep) -> VerifyResponse:
    """Verify LIC1 texts: one result per text, in order, with `fleet verify`'s verdicts."""
    # The body is read here, bounded, rather than by FastAPI, which reads any size first.
    raw = await _read_limited(request, MAX_VERIFY_BYTES)
    try:
        body = VerifyBody.model_validate_json(raw)
    except ValidationError as e:
        errors = json.loads(e.json(include_url=False, include_input=False))
        for err in errors:
            err["loc"] = ["body", *err["loc"]]
        raise HTTPException(http.HTTP_422_UNPROCESSABLE_CONTENT, errors) from None
    if len(body.texts) > MAX_VERIFY_TEXTS:
        raise HTTPException(
            http.HTTP_413_CONTENT_TOO_LARGE,
            f"{len(body.texts)} texts: at most {MAX_VERIFY_TEXTS} in one request",
        )
    for i, text in enumerate(body.texts):
        if len(text) > rust_core.MAX_TEXT_CHARS:
            raise HTTPException(
                http.HTTP_422_UNPROCESSABLE_CONTENT,
                [
                    {
                        "type": "string_too_long",
                        "loc": ["body", "texts", i],
                        "msg": f"longer than {rust_core.MAX_TEXT_CHARS} characters "
                        "(no QR code holds that much)",
                    }
                ],
            )
    texts = [t.strip() for t in body.texts]
    return VerifyResponse(results=await _verify(ctx, issuer, texts, body.at))


async def _verify(
    ctx: Ctx, issuer: IssuerDep, texts: list[str], at: int | None
) -> list[VerifyResult]:
    if not texts:
        return []
    store = await ctx.trust_cache.get(issuer)
    when = at if at is not None else int(ctx.clock().timestamp())
    found = await asyncio.to_thread(store.verify_many, texts, when)
    return [VerifyResult.of(v) for v in found]


@router.post(
    "/verify/images",
    response_model=ImagesResponse,
    responses={413: {"description": f"more than {MAX_IMAGES} images or one too large"}},
)
async def verify_images(
    ctx: Ctx,
    _: AnyRole,
    issuer: IssuerDep,
    files: Annotated[list[UploadFile], File(description="scanned images or photos (PNG, JPEG)")],
    at: Annotated[int | None, Query(ge=0, lt=1 << 63)] = None,
) -> ImagesResponse:
    """Find and decode every QR code in each image and verify it; per image, its results."""
    if len(files) > MAX_IMAGES:
        raise HTTPException(
            http.HTTP_413_CONTENT_TOO_LARGE, f"at most {MAX_IMAGES} images in one request"
        )
    out: list[ImageResult] = []
    for upload in files:
        name = upload.filename or "image"
        data = await upload.read(MAX_IMAGE_BYTES + 1)
        if len(data) > MAX_IMAGE_BYTES:
            raise HTTPException(
                http.HTTP_413_CONTENT_TOO_LARGE, f"{name}: over {MAX_IMAGE_BYTES} bytes"
            )
        try:
            texts = await asyncio.to_thread(decode_qr_texts, data)
        except ImageUnreadable as e:
            out.append(ImageResult(file=name, error=str(e), results=[]))
            continue
        except ImageSupportMissing as e:
            raise HTTPException(http.HTTP_503_SERVICE_UNAVAILABLE, str(e)) from None
        results = await _verify(ctx, issuer, [t.strip() for t in texts], at)
        codes = [
            ImageCode(**r.model_dump(), text=t[:TEXT_EXCERPT])
            for r, t in zip(results, texts, strict=True)
        ]
        out.append(ImageResult(file=name, error=None, results=codes))
    return ImagesResponse(images=out)
