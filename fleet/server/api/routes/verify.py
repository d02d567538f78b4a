"""What auditors use: verify LIC1 texts or scanned images against the server's trust store,
and download the trust and revocation lists for offline checks. Every role may."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, HTTPException, Query, Request, Response, UploadFile
from fastapi import status as http
from pydantic import ValidationError

from fleet.qr_images import (
    MAX_PIXELS,
    ImageSupportMissing,
    ImageUnreadable,
    decode_qr_texts,
    image_size,
)
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
from fleet.server.api.params import MAX_SAFE_INT
from fleet.server.db.models import Role
from fleet.server.licences import service

router = APIRouter(tags=["verify"])

AnyRole = Annotated[Principal, Depends(require_role(frozenset(Role)))]

#: The largest verify body, whatever its texts. 1,000 texts at the QR maximum (4,296 ASCII
#: characters, the Base45 alphabet needs no JSON escapes) are ~4.3 MB; twice that leaves room for
#: over-long or garbled scans, which get their own verdict (`too_large`, `malformed`) like
#: `fleet verify` gives them, instead of costing the request. Parsing 8 MiB takes ~40 ms.
MAX_VERIFY_BYTES = 8 * 1024 * 1024
#: Images in one upload, and bytes in one image (a 600 dpi A4 JPEG scan is ~5-10 MB).
MAX_IMAGES = 50
MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: The whole multipart body of one upload, refused unread past it (api/body_limit.py): three
#: images at the per-image limit, or 50 typical 1 MB photos; more is sent in several requests.
MAX_IMAGES_BODY_BYTES = 64 * 1024 * 1024
#: Pixels decoded in one upload request, summed over its images and counted from their headers
#: before any is decoded: two images at the per-image limit (or ten 12 MP phone photos). Decoding
#: and searching costs ~12 ms of CPU per megapixel (a solid 7,700x7,700 PNG: 0.7 s from 74 KB), so
#: this bounds a request at ~1.5 s of CPU where 50 such images cost ~35 s.
MAX_REQUEST_PIXELS = 2 * MAX_PIXELS
TEXT_EXCERPT = 120
#: Half of a UTF-16 pair on its own: JSON may spell one (`\ud800`), UTF-8 cannot hold it.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")

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
    responses={
        413: {"description": f"more than {MAX_VERIFY_TEXTS} texts or {MAX_VERIFY_BYTES} bytes"}
    },
)
async def verify(request: Request, ctx: Ctx, _: AnyRole, issuer: IssuerDep) -> VerifyResponse:
    """Verify LIC1 texts: one result per text, in order, with `fleet verify`'s verdicts.

    Any string is a text and gets a verdict (over 4,296 characters `too_large`, not LIC1
    `malformed`, a blank one `malformed`); only a body that is not `{"texts": [string, …]}`,
    holds over 1,000 texts or is over the byte bound is refused as a whole.
    """
    # The body is read here, bounded, rather than by FastAPI, which reads any size first.
    raw = await _read_limited(request, MAX_VERIFY_BYTES)
    body = _verify_body(raw)
    if len(body.texts) > MAX_VERIFY_TEXTS:
        raise HTTPException(
            http.HTTP_413_CONTENT_TOO_LARGE,
            f"{len(body.texts)} texts: at most {MAX_VERIFY_TEXTS} in one request",
        )
    # Trimmed as `fleet verify` trims a line (a leading byte-order mark, then whitespace).
    texts = [t.lstrip("\ufeff").strip() for t in body.texts]
    return VerifyResponse(results=await _verify(ctx, issuer, texts, body.at))


def _verify_body(raw: bytes) -> VerifyBody:
    """The body, read as `fleet verify` reads a scanner: bytes that are not UTF-8 and lone
    surrogates (`\\ud800`) become U+FFFD, so such a text is `malformed` rather than the whole
    request refused (pydantic's own JSON parser refuses both)."""
    try:
        doc = json.loads(raw.decode("utf-8", errors="replace"))
    except (ValueError, RecursionError) as e:  # not JSON; nested past the stack; huge numbers
        raise _unprocessable([{"type": "json_invalid", "loc": ["body"], "msg": str(e)}]) from None
    if isinstance(doc, dict) and isinstance(doc.get("texts"), list):
        doc["texts"] = [
            _LONE_SURROGATE.sub("\ufffd", t) if isinstance(t, str) else t for t in doc["texts"]
        ]
    try:
        return VerifyBody.model_validate(doc)
    except ValidationError as e:
        errors = json.loads(e.json(include_url=False, include_input=False))
        for err in errors:
            err["loc"] = ["body", *err["loc"]]
        raise _unprocessable(errors) from None


def _unprocessable(errors: list[dict[str, Any]]) -> HTTPException:
    return HTTPException(http.HTTP_422_UNPROCESSABLE_CONTENT, errors)


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
    responses={
        413: {
            "description": f"more than {MAX_IMAGES} images, one over {MAX_IMAGE_BYTES} bytes, "
            f"or a body over {MAX_IMAGES_BODY_BYTES} bytes"
        }
    },
)
async def verify_images(
    ctx: Ctx,
    _: AnyRole,
    issuer: IssuerDep,
    files: Annotated[
        list[UploadFile], File(min_length=1, description="scanned images or photos (PNG, JPEG)")
    ],
    at: Annotated[int | None, Query(ge=0, le=MAX_SAFE_INT)] = None,
) -> ImagesResponse:
    """Find and decode every QR code in each image and verify it; per image, its results.

    At most 50 images of 20 MB each, and 64 MiB in all (a larger body is refused unread):
    send more in several requests.
    """
    if len(files) > MAX_IMAGES:
        raise HTTPException(
            http.HTTP_413_CONTENT_TOO_LARGE, f"at most {MAX_IMAGES} images in one request"
        )
    out: list[ImageResult] = []
    spent = 0  # pixels this request has decoded
    for upload in files:
        name = upload.filename or "image"
        data = await upload.read(MAX_IMAGE_BYTES + 1)
        if len(data) > MAX_IMAGE_BYTES:
            raise HTTPException(
                http.HTTP_413_CONTENT_TOO_LARGE, f"{name}: over {MAX_IMAGE_BYTES} bytes"
            )
        try:
            width, height = await asyncio.to_thread(image_size, data)  # the header alone
            if spent + width * height > MAX_REQUEST_PIXELS:
                # Its own error, like an unreadable image: the others keep their verdicts.
                raise ImageUnreadable(
                    f"image of {width}x{height} pixels is over this request's "
                    f"{MAX_REQUEST_PIXELS:,} pixel budget ({spent:,} already decoded): "
                    "send it in another request"
                )
            spent += width * height
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
