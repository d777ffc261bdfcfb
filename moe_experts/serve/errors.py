"""OpenAI-style errors: ``{"error": {"message", "type", "param", "code"}}`` with the HTTP status that fits.

400 a body that is not JSON, or a field of the wrong type, unknown or unsupported; 403 the admin endpoint
from another machine; 404 an unknown model or path; 413 a body or request text over the byte limit; 422 a
value out of range; 503 with ``Retry-After`` when the queue is full; 504 when a request runs past the
per-request timeout. Nothing reaches the client as a traceback: anything unexpected is logged here and
answered as a 500 that says so.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

INVALID = "invalid_request_error"


class APIError(Exception):
    """An error answered to the client with ``status`` and the OpenAI error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 kind: str = INVALID, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind
        self.headers = headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class Overloaded(APIError):
    """The request queue is full: 503, with ``Retry-After`` estimated from how fast batches have been finishing."""

    def __init__(self, queued: int, retry_after: int, limit: int) -> None:
        super().__init__(503, f"the server is busy: {queued} requests are queued, the most it holds (--max-queue "
                         f"{limit}); retry after {retry_after} s", code="server_overloaded", kind="server_error",
                         headers={"Retry-After": str(retry_after)})
        self.queued, self.retry_after = queued, retry_after


class TimedOut(Exception):
    """The request ran past the per-request timeout (``tokens``: how many it had generated)."""

    def __init__(self, tokens: int) -> None:
        super().__init__(tokens)
        self.tokens = tokens


def from_outcome(exc: BaseException, timeout: float) -> APIError:
    """What a request that failed in the queue or its batch answers."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, TimedOut):
        done = f"after {exc.tokens} generated tokens" if exc.tokens else "before it was generated"
        return APIError(504, f"the request did not finish within the server's timeout of {timeout:g} s; it stopped "
                        f"{done} (fix: ask for fewer max_tokens, retry when the server is less busy, or start the "
                        "server with a longer --timeout)", code="timeout", kind="server_error")
    return from_library(exc)  # type: ignore[arg-type]


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
        return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)

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
