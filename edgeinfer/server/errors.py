"""OpenAI-style errors: every failure is ``{"error": {"message", "type", "param", "code"}}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ContextOverflowError, EdgeInferError, EmptyPromptError, InvalidRequestError

log = logging.getLogger("edgeinfer.server")


class APIError(Exception):
    """An error with its HTTP status, sent to the client as an OpenAI error object."""

    def __init__(self, status: int, message: str, *, code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers or {}

    def body(self) -> dict:
        """The OpenAI error object."""
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        """The JSON response a client gets for this error."""
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def from_edgeinfer(exc: EdgeInferError, *, prompt_param: str | None = None) -> APIError:
    """Map an SDK error to the HTTP error a client can act on (bad request vs. server fault);
    ``prompt_param`` names the request field an error about the prompt points at."""
    if isinstance(exc, ContextOverflowError):
        return APIError(400, str(exc), code="context_length_exceeded", param=prompt_param)
    if isinstance(exc, EmptyPromptError):
        return APIError(400, str(exc), code="empty_prompt", param=prompt_param)
    if isinstance(exc, InvalidRequestError):
        return APIError(400, str(exc), code="invalid_request")
    return APIError(500, f"{type(exc).__name__}: {exc}", code="model_error")


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


def install_handlers(app: FastAPI) -> None:
    """Render every error the app can raise (ours, the SDK's, FastAPI's, unexpected) the same way."""

    async def api_error(_: Request, exc: APIError) -> JSONResponse:
        return exc.response()

    async def sdk_error(_: Request, exc: EdgeInferError) -> JSONResponse:
        return from_edgeinfer(exc).response()

    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = f"{exc.detail}: {request.method} {request.url.path}"
        return APIError(exc.status_code, message, code=code, headers=exc.headers).response()

    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        return APIError(400, str(exc.errors()[:1]), code="invalid_request").response()

    async def unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected server error")
        return APIError(500, f"internal error: {type(exc).__name__}", code="internal_error").response()

    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(EdgeInferError, sdk_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, unexpected)
