"""Errors → OpenAI-style JSON responses. The status comes from ``veil.errors`` alone.

Unexpected exceptions are logged by type and location only: their messages can quote
request content, and no content may reach a log.
"""

from __future__ import annotations

import contextlib
import logging
import traceback

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from veil.chat import invalid_from_error
from veil.errors import InvalidRequest, NotFound, VeilError

log = logging.getLogger("veil.api")


def error_response(error: VeilError) -> Response:
    return Response(
        orjson.dumps(error.to_dict()),
        status_code=error.status,
        media_type="application/json",
        headers=error.headers(),
    )


async def _veil_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, VeilError)
    return error_response(exc)


async def _validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if not errors:
        return error_response(InvalidRequest("invalid request"))
    first = dict(errors[0])
    first["loc"] = tuple(p for p in first.get("loc", ()) if p not in ("body", "path", "query"))
    return error_response(invalid_from_error(first))


async def _http_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFound("no such route; the API lives under /v1"))
    if exc.status_code == 405:
        err = InvalidRequest("method not allowed on this route", code="method_not_allowed")
        err.status = 405
        return error_response(err)
    err = InvalidRequest(str(exc.detail), code="http_error")
    err.status = exc.status_code
    return error_response(err)


async def _unexpected(request: Request, exc: Exception) -> Response:
    return internal_error(exc, request.scope.get("state", {}).get("request_id", "?"))


def internal_error(exc: BaseException, request_id: str) -> Response:
    """A 500 for a bug: logged by type and location, never with its message."""
    log_bug(exc, request_id)
    return error_response(VeilError(f"internal error (request id {request_id})"))


def log_bug(exc: BaseException, request_id: str) -> None:
    if getattr(exc, "_veil_logged", False):
        return
    frames = traceback.extract_tb(exc.__traceback__)
    where = "; ".join(f"{f.filename}:{f.lineno} in {f.name}" for f in frames[-5:])
    log.error("unhandled %s on request %s at %s", type(exc).__name__, request_id, where)
    with contextlib.suppress(AttributeError):  # exceptions with __slots__
        exc._veil_logged = True  # type: ignore[attr-defined]


def install(app: FastAPI) -> None:
    app.add_exception_handler(VeilError, _veil_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
