"""One place that turns every failure into ``{"error": code, "message": text}``.

The same middleware also times the request for the latency histogram and enforces the
in-flight bound, so each request pays for one middleware, not three.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from functools import lru_cache

from aiohttp import web

from anonticket.errors import (
    BodyTooLarge,
    MethodNotAllowed,
    NotFound,
    ServiceError,
    Unavailable,
)
from anonticket.metrics import Metrics

log = logging.getLogger("anonticket.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_HTTP_ERRORS: dict[int, type[ServiceError]] = {
    404: NotFound,
    405: MethodNotAllowed,
    413: BodyTooLarge,
}


@lru_cache(maxsize=256)
def _plain_error_body(code: str, message: str) -> bytes:
    # codes and messages are fixed texts (errors.py, aiohttp's reasons): a small set,
    # and a 404 flood should not pay for json.dumps on every answer
    return json.dumps({"error": code, "message": message}).encode()


def error_response(error: ServiceError) -> web.Response:
    if error.extra:
        body = json.dumps(error.body()).encode()
    else:
        body = _plain_error_body(error.code, error.message)
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
