"""Debian's firefox-esr, headless, driven over Marionette (its own remote protocol).

Playwright cannot drive a stock Firefox (it needs its own patched build, a download),
so the checkout's "Tor Browser at Safest" run talks Marionette directly: a TCP socket
carrying ``length:json`` frames, the WebDriver commands Firefox implements itself.
The profile sets what Safest sets that matters to a page: no JavaScript, no SVG, no
MathML, no downloadable fonts, no WebGL. Marionette's own clicks and keys need no
page script, so forms are submitted the way a person's click submits them.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import tiers

ELEMENT = "element-6066-11e4-a52e-4f735466cecf"
START_TIMEOUT = 60.0
# tor-browser's SecurityLevel.sys.mjs at "safest", as far as prefs reach a page (NoScript,
# which blocks scripts there, is an extension: javascript.enabled=false stands in for it)
SAFEST = {
    "javascript.enabled": False,
    "svg.disabled": True,
    "mathml.disabled": True,
    "gfx.downloadable_fonts.enabled": False,
    "webgl.disabled": True,
    "media.autoplay.default": 5,
}
QUIET = {  # an automated profile: no first-run pages, no network calls of its own
    "marionette.port": 0,  # a free port, written to MarionetteActivePort in the profile
    "browser.shell.checkDefaultBrowser": False,
    "browser.startup.homepage_override.mstone": "ignore",
    "datareporting.policy.dataSubmissionEnabled": False,
    "toolkit.telemetry.reportingpolicy.firstRun": False,
    "app.update.auto": False,
    "network.proxy.type": 0,
    "browser.safebrowsing.malware.enabled": False,
    "browser.safebrowsing.phishing.enabled": False,
    "network.captive-portal-service.enabled": False,
    "network.connectivity-service.enabled": False,
}


class MarionetteError(Exception):
    pass


def firefox_binary() -> str | None:
    return shutil.which("firefox-esr") or shutil.which("firefox")


class Firefox:
    """One headless Firefox with its own profile; ``start`` then WebDriver-like calls."""

    def __init__(self, profile: Path, prefs: dict[str, Any] | None = None) -> None:
        self.profile = profile
        self.prefs = {**QUIET, **(SAFEST if prefs is None else prefs)}
        self.proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._ids = 0

    def start(self, width: int, height: int) -> Firefox:
        tiers.starting("Firefox")
        binary = firefox_binary()
        if binary is None:
            raise MarionetteError("firefox-esr is not installed (Debian package firefox-esr)")
        self.profile.mkdir(parents=True, exist_ok=True)
        (self.profile / "user.js").write_text(
            "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in self.prefs.items()))
        log = open(self.profile.parent / f"{self.profile.name}.log", "wb")
        self.proc = subprocess.Popen(
            [binary, "--headless", "--marionette", "--no-remote", "--profile", str(self.profile), "about:blank"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MOZ_HEADLESS": "1"})
        log.close()
        port_file = self.profile / "MarionetteActivePort"
        deadline = time.monotonic() + START_TIMEOUT
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise MarionetteError(f"firefox did not start Marionette within {START_TIMEOUT:.0f}s")
            time.sleep(0.05)
        self._sock = socket.create_connection(("127.0.0.1", int(port_file.read_text())), timeout=60)
        hello = self._read()
        if hello.get("applicationType") != "gecko":
            raise MarionetteError(f"not Marionette: {hello}")
        self.command("WebDriver:NewSession", {"capabilities": {"alwaysMatch": {"acceptInsecureCerts": False}}})
        self.command("WebDriver:SetWindowRect", {"width": width, "height": height})
        return self

    # ------------------------------------------------------------------ protocol
    def _read(self) -> Any:
        assert self._sock is not None
        size = b""
        while not size.endswith(b":"):
            chunk = self._sock.recv(1)
            if not chunk:
                raise MarionetteError("Marionette closed the connection")
            size += chunk
        want, data = int(size[:-1]), b""
        while len(data) < want:
            chunk = self._sock.recv(want - len(data))
            if not chunk:
                raise MarionetteError("Marionette closed the connection")
            data += chunk
        return json.loads(data)

    def command(self, name: str, params: dict[str, Any] | None = None) -> Any:
        assert self._sock is not None
        self._ids += 1
        body = json.dumps([0, self._ids, name, params or {}]).encode()
        self._sock.sendall(str(len(body)).encode() + b":" + body)
        kind, msg_id, error, result = self._read()
        if kind != 1 or msg_id != self._ids:
            raise MarionetteError(f"unexpected answer to {name}")
        if error:
            raise MarionetteError(f"{name}: {error.get('error')}: {error.get('message')}")
        return result.get("value") if isinstance(result, dict) and "value" in result else result

    # ------------------------------------------------------------------ what a person does
    def go(self, url: str) -> None:
        self.command("WebDriver:Navigate", {"url": url})

    def find(self, css: str) -> str:
        return str(self.command("WebDriver:FindElement", {"using": "css selector", "value": css})[ELEMENT])

    def find_all(self, css: str) -> list[str]:
        found = self.command("WebDriver:FindElements", {"using": "css selector", "value": css})
        return [str(e[ELEMENT]) for e in found]

    def click(self, css: str) -> None:
        """Clicks and waits for the page the click loads (Marionette's own page-load wait)."""
        self.command("WebDriver:ElementClick", {"id": self.find(css)})

    def type(self, css: str, text: str) -> None:
        self.command("WebDriver:ElementSendKeys", {"id": self.find(css), "text": text})

    def text(self, css: str = "body") -> str:
        return str(self.command("WebDriver:GetElementText", {"id": self.find(css)}))

    def value(self, css: str) -> str:
        return str(self.command("WebDriver:GetElementProperty", {"id": self.find(css), "name": "value"}))

    def attribute(self, css: str, name: str) -> str | None:
        found = self.command("WebDriver:GetElementAttribute", {"id": self.find(css), "name": name})
        return None if found is None else str(found)

    def url(self) -> str:
        return str(self.command("WebDriver:GetCurrentURL"))

    def screenshot(self, path: Path, css: str | None = None) -> Path:
        """The whole page (or one element) as a person sees it."""
        params: dict[str, Any] = {"full": css is None}
        if css is not None:
            params["id"] = self.find(css)
        path.write_bytes(base64.b64decode(self.command("WebDriver:TakeScreenshot", params)))
        return path

    def close(self) -> None:
        if self._sock is not None:
            try:
                self.command("Marionette:Quit", {"flags": ["eForceQuit"]})
            except (MarionetteError, OSError):
                pass
            self._sock.close()
            self._sock = None
        if self.proc is not None:
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.proc = None
