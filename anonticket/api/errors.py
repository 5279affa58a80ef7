"""One place that turns every failure into ``{"error": code, "message": text}``.

The same middleware also times the request for the latency histogram and enforces the
in-flight bound, so each request pays for one middleware, not three.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable
from functools import lru_cache
from typing import Any

from aiohttp import web, web_protocol
from aiohttp.http_exceptions import HttpProcessingError

from anonticket.domain.errors import (
    BodyTooLarge,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    ServiceError,
    Unavailable,
)
from anonticket.runtime.metrics import Metrics

log = logging.getLogger("anonticket.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_ERRORS: dict[int, type[ServiceError]] = {
    404: NotFound,
    405: MethodNotAllowed,
    413: BodyTooLarge,
}


@lru_cache(maxsize=256)
def plain_error_body(code: str, message: str) -> bytes:
    # codes and messages are fixed texts (domain/errors.py, aiohttp's reasons): a small set,
    # and a 404 flood should not pay for json.dumps on every answer
    return json.dumps({"error": code, "message": message}).encode()


def error_response(error: ServiceError) -> web.Response:
    if error.extra:
        body = json.dumps(error.body()).encode()
    else:
        body = plain_error_body(error.code, error.message)
    return web.Response(
        status=error.status, body=body, content_type="application/json",
        headers=error.headers or None,
    )


def _from_http_exception(exc: web.HTTPException) -> ServiceError:
    kind = _HTTP_ERRORS.get(exc.status)
    if kind is not None:
        error = kind()
    else:
        error = ServiceError("request could not be handled")
        error.status = exc.status
        error.code = (exc.reason or "error").lower().replace(" ", "_")
    if isinstance(exc, web.HTTPMethodNotAllowed):
        error.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
    return error


def route_template(request: web.Request) -> str:
    route = request.match_info.route
    resource = route.resource
    return resource.canonical if resource is not None else "unmatched"


def make_middleware(metrics: Metrics, max_in_flight: int) -> Callable[..., Awaitable[web.StreamResponse]]:
    """One middleware per listener, each with its own in-flight bound: a flood of
    customers can never lock the operator out of /metrics and the admin routes."""
    in_flight = 0
    durations = metrics.duration
    overload = metrics.rejected_overload

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal in_flight
        started = time.perf_counter()
        if in_flight >= max_in_flight:
            overload.inc()
            return error_response(Unavailable("too many requests in flight, retry later"))
        in_flight += 1
        try:
            response = await handler(request)
        except ServiceError as exc:
            response = error_response(exc)
        except web.HTTPException as exc:
            response = error_response(_from_http_exception(exc))
        except ConnectionResetError:
            # the client went away mid-request: nobody to answer, nothing to log
            response = web.Response(status=499)
        except (HttpProcessingError, web.RequestPayloadError):
            # raised while reading the body (bad gzip, a broken chunk): the client's fault
            response = error_response(InvalidRequest("request body could not be read"))
        except Exception:
            # the request's path and body are never logged: they can hold a PID or token
            log.exception("unhandled error on %s %s", request.method, route_template(request))
            response = error_response(ServiceError())
        finally:
            in_flight -= 1
        histogram = durations.get(route_template(request)) or durations["unmatched"]
        histogram.observe(time.perf_counter() - started)
        return response

    return middleware


# what reading a request body raises when the client sent a broken one or went away
_CLIENT_BODY_ERRORS = (web.RequestPayloadError, HttpProcessingError, ConnectionError)


class _RequestHandler(web_protocol.RequestHandler):
    """aiohttp answers a request its parser refuses (a bad request line, header or
    Content-Length) by itself, before any middleware: a text/plain body quoting the raw
    request line — a token path — and an ERROR log line with a traceback quoting it
    again. Keep its status; answer in our shape and log the exception type only."""

    def handle_error(self, request: web.BaseRequest, status: int = 500,
                     exc: BaseException | None = None, message: str | None = None) -> web.StreamResponse:
        kind = type(exc).__name__ if exc is not None else "-"
        if status >= 500:
            log.error("unhandled error outside the request handlers (%s)", kind)
        else:
            log.info("refused a request that is not valid HTTP (%s)", kind)
        if request.writer.output_size > 0:  # part of a response went out: only closing is left
            raise ConnectionError("response already started")
        error = ServiceError() if status >= 500 else InvalidRequest("request is not valid HTTP/1.1")
        error.status = status
        response = error_response(error)
        response.force_close()
        return response

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's other traceback, outside ``handle_error``: after an answer went out,
        ``start()`` drains the unread rest of the body (the lingering read), and that read
        raises again whatever broke the body — a Content-Encoding that does not decode, a
        bad chunk — though the client already had its 400 for it, or the route never read
        a body at all. The client's doing: one debug line. Anything else aiohttp logs here
        (a handler returning no response) is ours: ERROR, by exception type only."""
        exc = kw.get("exc_info")
        if not isinstance(exc, BaseException):
            exc = sys.exc_info()[1]
        kind = type(exc).__name__ if exc is not None else "-"
        if isinstance(exc, _CLIENT_BODY_ERRORS):
            cause = exc.__cause__ or exc.__context__
            log.debug("dropped a request body that could not be read (%s%s)", kind,
                      f" from {type(cause).__name__}" if cause is not None else "")
        else:
            log.error("unhandled error outside the request handlers (%s)", kind)


class _Server(web.Server):
    def __call__(self) -> web_protocol.RequestHandler:
        return _RequestHandler(self, loop=self._loop, **self._kwargs)


class JsonErrorRunner(web.AppRunner):
    """An AppRunner whose connections answer even unparsable requests in the JSON shape."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _Server  # aiohttp has no parameter for the handler class
        return server
