"""A buffered access log: method, route template, status, duration — never the path.

The path of a token introspection IS the token, so aiohttp's default format (which
logs the request line) is not an option. Going through ``logging`` for every request
also halves a trivial handler's throughput, so lines are collected and written to
the stream in batches: at most ``_FLUSH_LINES`` lines or ``_FLUSH_SECS`` late.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger

from anonticket.api.errors import route_template

_FLUSH_LINES = 256
# a method is client-chosen text; only known ones are logged verbatim
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_FLUSH_SECS = 0.5


class AccessLogBuffer:
    """Shared by both listeners' loggers; flushed by a timer and on shutdown."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._timer: asyncio.TimerHandle | None = None

    def append(self, line: str) -> None:
        self._lines.append(line)
        if len(self._lines) >= _FLUSH_LINES:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(_FLUSH_SECS, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines:
            stream = self._stream or sys.stderr
            stream.write("".join(self._lines))
            stream.flush()
            self._lines.clear()


def make_access_logger_class(buffer: AccessLogBuffer, listener: str) -> type[AbstractAccessLogger]:
    prefix = f"Z INFO anonticket.access {listener} "
    # formatting the time costs more than the rest of the line: once per second is enough
    stamp_second, stamp = -1, ""

    class BufferedAccessLogger(AbstractAccessLogger):
        def log(self, request: web.BaseRequest, response: web.StreamResponse, elapsed: float) -> None:
            nonlocal stamp_second, stamp
            template = route_template(request) if isinstance(request, web.Request) else "unmatched"
            method = request.method if request.method in _METHODS else "OTHER"
            now = int(time.time())
            if now != stamp_second:
                stamp_second, stamp = now, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now))
            buffer.append(
                f"{stamp}{prefix}{method} {template} {response.status} {elapsed * 1000:.2f}ms\n"
            )

        @property
        def enabled(self) -> bool:
            return True

    return BufferedAccessLogger
