"""The OpenAPI document, completed with the errors every operation can really answer.

FastAPI documents a route's success and, when it has parameters, a 422. What the shared
machinery adds is stated here once, by what the operation declares, rather than on each route:
- 401 and 403 where the operation takes a token (it names a security scheme);
- 404 where the path has parameters (they name something that may not exist);
- 422 where it takes any parameter or body (a route reading its body itself included);
- 413 where it takes a body: one over the route's bound is refused unread (body_limit.py).
A route documents what only it answers (409, 413, 503) with `responses=`.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from fleet.server.api.schemas import ErrorBody

_ERROR = {"$ref": "#/components/schemas/ErrorBody"}
_INVALID = {"$ref": "#/components/schemas/HTTPValidationError"}
_OPERATIONS = ("get", "put", "post", "delete", "patch")


class FleetAPI(FastAPI):
    """FastAPI whose `/openapi.json` carries the error answers (see the module's doc)."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            document_errors(super().openapi())
        assert self.openapi_schema is not None
        return self.openapi_schema


def document_errors(schema: dict[str, Any]) -> None:
    """Add the common error answers to every operation of `schema`, in place."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components.setdefault(
        "ErrorBody", ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")
    )
    for item in schema.get("paths", {}).values():
        for method in _OPERATIONS:
            op = item.get(method)
            if op is not None:
                _document(op)


def _document(op: dict[str, Any]) -> None:
    responses: dict[str, Any] = op.setdefault("responses", {})

    def add(status: int, description: str, body: dict[str, Any]) -> None:
        entry = responses.setdefault(str(status), {"description": description})
        entry.setdefault("content", {"application/json": {"schema": body}})

    params = op.get("parameters", [])
    if op.get("security"):
        add(401, "missing, unknown or revoked token", _ERROR)
        add(
            403,
            "the token's role may not do this (or a dashboard change lacks its CSRF token)",
            _ERROR,
        )
    if any(p.get("in") == "path" for p in params):
        add(404, "no such resource", _ERROR)
    if "requestBody" in op:
        add(413, "the body is over this route's size limit (refused unread)", _ERROR)
    if params or "requestBody" in op:
        # FastAPI's own 422 schema: any route with a parameter has made it a component.
        add(422, "a parameter or the body is not valid; `loc` names it", _INVALID)
