"""Helpers for the licence and verify API tests: a fixed issuer on the test app, sample claims."""

from __future__ import annotations

from typing import Any

import rust_core
from fleet.demo import sample_uscc
from fleet.server.licences.keys import Issuer
from tests.server.api_support import Api

ISSUER = "CN-510107"
AUTHORITY = "成都市武侯区市场监督管理局"


def give_issuer(api: Api, alg: str = "EdDSA") -> Issuer:
    """A new issuing key on the app (the server would load it from its data dir)."""
    issuer = Issuer(rust_core.SigningKey.generate(alg), ISSUER, AUTHORITY)
    api.ctx.issuer = issuer
    return issuer


def lic_body(**changes: Any) -> dict[str, Any]:
    lic: dict[str, Any] = {
        "uscc": sample_uscc(),
        "name": "成都市武侯区蓉香小吃店",
        "kind": "个体工商户",
        "rep": "王秀英",
        "addr": "四川省成都市武侯区玉林北路12号附3号",
        "est": "2024-03-18",
        "scope": "小吃服务；饮料及冷饮服务",
        "term": "WH-HALL-07",
    }
    for key, value in changes.items():
        if value is None:
            lic.pop(key, None)
        else:
            lic[key] = value
    return {"lic": lic}


async def issue(api: Api, body: dict[str, Any] | None = None, role: str = "operator") -> Any:
    r = await api.client.post("/api/v1/licences", json=body or lic_body(), headers=api.auth(role))
    assert r.status_code == 201, r.text
    return r.json()
