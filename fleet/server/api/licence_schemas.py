"""Request and response bodies of the licence, trust and verify routes."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, Strict, StringConstraints, model_validator

import rust_core
from fleet.licence_claims import LIC_FIELDS, claims_to_json
from fleet.server.api.params import JSON_NUMBER, MAX_SAFE_INT, TerminalIdValue, worded
from fleet.server.db.models import Licence

#: Verdicts reached only after the signature checked out: their claims can be believed.
SIGNED_VERDICTS = frozenset({"valid", "revoked", "expired", "not_yet_valid"})
#: Texts in one verify request.
MAX_VERIFY_TEXTS = 1000
EXAMPLE_LIC = {
    "uscc": "92510107MA6CQ8T15F",
    "name": "成都市武侯区蓉香小吃店",
    "kind": "个体工商户",
    "rep": "王秀英",
    "addr": "四川省成都市武侯区玉林北路12号附3号",
    "est": "2024-03-18",
    "scope": "小吃服务；饮料及冷饮服务",
    "term": "WH-HALL-07",
}


#: Text a required licence field may hold: rust_core refuses one that is empty or blank.
Text = Annotated[str, StringConstraints(min_length=1, max_length=500, pattern=r"\S")]
#: GB 32100-2015's alphabet; the check character itself is rust_core's to judge (a 422).
USCC_SHAPE = r"^[0-9A-HJ-NPQRTUWXY]{18}$"
#: YYYY-MM-DD; a day the month does not have (02-30) is rust_core's to refuse.
DATE_SHAPE = r"^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"


class LicFields(BaseModel):
    """The licence fields (DESIGN.md "LIC1"), by name; their numbers ("1" … "9") are taken too."""

    model_config = ConfigDict(extra="forbid")

    uscc: Annotated[
        str,
        StringConstraints(pattern=USCC_SHAPE),
        worded("a unified social credit code is 18 digits and capital letters (no I, O, S, V, Z)"),
    ] = Field(description="unified social credit code")
    name: Text
    kind: Text = Field(description="entity type, e.g. 个体工商户")
    rep: Text = Field(description="legal representative / operator")
    addr: Text
    cap: str | None = Field(default=None, max_length=500, description="registered capital")
    est: Annotated[str, StringConstraints(pattern=DATE_SHAPE), worded("not a date: YYYY-MM-DD")] = (
        Field(description="date established, YYYY-MM-DD")
    )
    scope: str | None = Field(default=None, max_length=2000, description="business scope")
    term: Text | None = Field(
        default=None, description="the terminal that prints it; default: `terminal`"
    )

    @model_validator(mode="before")
    @classmethod
    def _numbers_to_names(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out: dict[str, Any] = {}
        for key, value in data.items():
            name = _NAMES.get(str(key), str(key))
            if name in out:
                raise ValueError(f'"lic" field {key!r} is given twice (as number and name?)')
            out[name] = value
        return out


_NAMES = {str(number): name for name, number in LIC_FIELDS.items()}


class LicenceCreate(BaseModel):
    """A licence to issue. The server sets `iss` (its issuing authority) and `iat` (now).

    Field 9 (`term`, the printing terminal) is required in a licence: give `lic.term`, or
    `terminal` (a registered terminal) and it is filled from there."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {"required": ["terminal"], "properties": {"terminal": {"type": "string"}}},
                {"properties": {"lic": {"type": "object", "required": ["term"]}}},
            ]
        },
    )

    lic: LicFields = Field(examples=[EXAMPLE_LIC])
    terminal: TerminalIdValue | None = Field(
        default=None,
        description="registered terminal that prints it; also fills lic.term when that is absent",
    )
    exp: Annotated[int, Field(ge=0, le=MAX_SAFE_INT), JSON_NUMBER] | None = Field(
        default=None, description="expiry of this printout, epoch s"
    )
    cti: str | None = Field(
        default=None,
        pattern=r"^[0-9a-fA-F]{32}$",
        description="serial (32 hex digits); default: 16 random bytes chosen by the server",
    )

    def lic_claims(self) -> dict[int, str]:
        """The `lic` map as rust_core takes it (numbers as keys; absent fields left out)."""
        given = self.lic.model_dump(exclude_none=True)
        return {LIC_FIELDS[name]: value for name, value in given.items()}


class LicenceIssued(BaseModel):
    serial: str
    text: str = Field(description="the LIC1 QR text")
    qr_svg: str = Field(description="the QR code as an SVG document (alphanumeric, level Q)")
    qr_png_base64: str = Field(description="the same QR code as a PNG, base64")
    issued_at: datetime


class LicencePublic(BaseModel):
    serial: str
    text: str
    claims: dict[str, Any] = Field(
        description='as `fleet verify --json` shows them: "lic" keys "1"…'
    )
    terminal: str | None
    issued_at: datetime
    issued_by: str
    revoked: bool
    revoked_at: datetime | None
    revoke_reason: str | None
    revoked_by: str | None
    qr_svg: str | None = Field(default=None, description="with ?qr=true")
    qr_png_base64: str | None = Field(default=None, description="with ?qr=true")

    @classmethod
    def of(cls, row: Licence, *, qr: bool = False) -> LicencePublic:
        out = cls(
            serial=row.serial,
            text=row.text,
            claims=row.claims,
            terminal=row.terminal_id,
            issued_at=row.issued_at,
            issued_by=row.issued_by,
            revoked=row.revoked_at is not None,
            revoked_at=row.revoked_at,
            revoke_reason=row.revoke_reason,
            revoked_by=row.revoked_by,
        )
        if qr:
            out.qr_svg = rust_core.qr_svg(row.text)
            out.qr_png_base64 = base64.b64encode(rust_core.qr_png(row.text)).decode()
        return out


class RevokeBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=500)


class VerifyBody(BaseModel):
    # Strict items: a number or null is not a scanned text (a client's bug, not a bad scan).
    texts: list[Annotated[str, Strict()]] = Field(
        description=f"LIC1 texts as scanned, at most {MAX_VERIFY_TEXTS}; every string gets a "
        f"verdict, as in `fleet verify` (over {rust_core.MAX_TEXT_CHARS} characters `too_large`, "
        "not LIC1 or blank `malformed`)"
    )
    at: Annotated[int, Field(ge=0, le=MAX_SAFE_INT), JSON_NUMBER] | None = Field(
        default=None, description="check validity at this epoch time"
    )


class VerifyResult(BaseModel):
    """One verdict, as `fleet verify --json` gives it, plus the serial and where it failed."""

    verdict: str
    valid: bool
    serial: str | None = Field(description="hex, only when the signature checked out")
    claims: dict[str, Any] | None = Field(description="only when the signature checked out")
    stage: str | None = Field(description="the step that decided a non-valid verdict")
    detail: str | None
    kid: str | None
    alg: str | None

    @classmethod
    def of(cls, v: rust_core.Verification) -> VerifyResult:
        claims = claims_to_json(v.claims) if v.claims is not None else None
        if v.verdict not in SIGNED_VERDICTS:
            claims = None
        serial = claims.get("cti") if claims is not None else None
        return cls(
            verdict=v.verdict,
            valid=v.verdict == "valid",
            serial=serial if isinstance(serial, str) else None,
            claims=claims,
            stage=v.stage,
            detail=v.detail,
            kid=v.kid.hex() if v.kid is not None else None,
            alg=v.alg,
        )


class VerifyResponse(BaseModel):
    results: list[VerifyResult]


class ImageCode(VerifyResult):
    text: str = Field(description="the decoded text, cut to 120 characters")


class ImageResult(BaseModel):
    file: str
    error: str | None = Field(description="why the image could not be read; null if it could")
    results: list[ImageCode] = Field(description="one per QR code found (none: no code)")


class ImagesResponse(BaseModel):
    images: list[ImageResult]
