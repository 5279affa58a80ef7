"""anonticket/api/openapi.yaml describes exactly the routes each listener registers."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import yaml
from aiohttp import web

from anonticket.service.app import Service, build_internal_app, build_public_app
from conftest import url

SPEC_PATH = Path(__file__).resolve().parents[2] / "anonticket" / "api" / "openapi.yaml"


def spec() -> dict:
    return yaml.safe_load(SPEC_PATH.read_text())


def registered(app: web.Application) -> set[tuple[str, str]]:
    """A route for any method (the gateway check) counts as the methods its path
    documents, which must then say ``x-any-method``."""
    found = set()
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        path = route.resource.canonical
        if route.method == "*":
            operations = spec()["paths"][path]
            assert all(op.get("x-any-method") for op in operations.values()), path
            found |= {(method.upper(), path) for method in operations}
        else:
            found.add((route.method, path))
    return found


def documented(listener: str) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, operations in spec()["paths"].items()
        for method, operation in operations.items()
        if listener in operation["x-listeners"]
    }


def test_spec_is_openapi_3() -> None:
    assert spec()["openapi"].startswith("3.")


def test_every_header_parameter_says_what_it_may_hold() -> None:
    """A header left as a free string claims that any text is a valid value, but HTTP carries
    no control character: aiohttp's parser answers such a request 400 before any route or
    middleware, and a fuzzer drawing from the contract then meets answers (and counts) the
    contract does not describe. So every header states its characters, or is no string."""
    components = spec()["components"]["parameters"]
    free = []
    for path, operations in spec()["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if "$ref" in parameter:
                    parameter = components[parameter["$ref"].rsplit("/", 1)[1]]
                schema = parameter["schema"]
                if parameter["in"] == "header" and schema.get("type") == "string" and not (
                        {"pattern", "format", "enum", "const"} & schema.keys()):
                    free.append(f"{method.upper()} {path}: {parameter['name']}")
    assert free == []


async def test_every_route_is_documented_and_vice_versa(service: Service) -> None:
    assert registered(build_public_app(service.state)) == documented("public")
    assert registered(build_internal_app(service.state)) == documented("internal")


async def test_internal_listener_serves_the_spec(service: Service, http: aiohttp.ClientSession) -> None:
    async with http.get(url(service.internal_address, "/docs/openapi.yaml")) as resp:
        assert resp.status == 200
        assert yaml.safe_load(await resp.read()) == spec()
