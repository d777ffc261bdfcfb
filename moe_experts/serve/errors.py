"""OpenAI-style errors: ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status that fits.

400 a body that is not JSON, or a field of the wrong type, unknown or unsupported; 404 an unknown model
or path; 413 a body or request text over the byte limit; 422 a value out of range. Nothing reaches the
client as a traceback: anything unexpected is logged here and answered as a 500 that says so.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

INVALID = "invalid_request_error"


class APIError(Exception):
    """An error answered to the client with ``status`` and the OpenAI error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = INVALID) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def from_library(exc: Exception, *, param: str | None = None) -> APIError:
    """A library error as the client sees it: a request problem is theirs (422), anything else the server's (500)."""
    from moe_experts.errors import MoeExpertsError, RequestError

    if isinstance(exc, RequestError):
        return APIError(422, _with_hint(exc), param=param, code="invalid_value")
    if isinstance(exc, MoeExpertsError):
        logger.error("request failed: %s", exc)
        return APIError(500, _with_hint(exc), code="server_error", kind="server_error")
    logger.exception("unexpected error while answering a request")
    return APIError(500, "internal server error; the server log has the details", code="server_error",
                    kind="server_error")


def _with_hint(exc: Any) -> str:
    hint = getattr(exc, "hint", None)
    return f"{exc.message} (fix: {hint})" if hint else exc.message


def install(app: Any) -> None:
    """Answer APIError, unknown paths and methods, and any unexpected exception in the OpenAI error shape."""
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    async def api_error(_request: Any, exc: APIError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status)

    async def http_error(_request: Any, exc: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        message = {404: "no such endpoint; see GET /v1/models, POST /v1/chat/completions, POST /v1/completions, "
                        "POST /v1/route, GET /healthz",
                   405: "method not allowed on this endpoint"}.get(exc.status_code, str(exc.detail))
        return JSONResponse(APIError(exc.status_code, message, code=code).body(), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    async def unexpected(_request: Any, exc: Exception) -> JSONResponse:
        err = from_library(exc)
        return JSONResponse(err.body(), status_code=err.status)

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)
