"""The ceiling for ``/health/live``: a bare aiohttp app answering a constant GET.

Same aiohttp, same event loop kind as ``bin/anonticket serve`` (asyncio's default
loop: the service does not use uvloop, see docs/benchmarks.md), no middleware, no access log.
If ``/health/live`` of the real service falls far below this, something shared by
every request (middleware, logging, metrics) is heavy, and the scenario ratios to
``/health/live`` would flatter the handlers. Prints ``listening on HOST:PORT`` once bound.

    python3 bench/bare_app.py   # binds 127.0.0.1 on a free port
"""

from __future__ import annotations

import asyncio
import signal
import sys

from aiohttp import web

_BODY = b'{"status":"ok"}'


async def constant(request: web.Request) -> web.Response:
    return web.Response(body=_BODY, content_type="application/json")


async def main() -> int:
    app = web.Application()
    app.router.add_get("/", constant)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    print(f"listening on {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
