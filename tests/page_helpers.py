"""Reading the checkout's HTML as a test (and a browser) would: fields, forms, links, style.

Shared by the unit, privacy and browser tests of the /pay pages.
"""

from __future__ import annotations

import base64
import hashlib
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

# everything a page may point at: itself (forms, links home), data: images, the wallet
LOCAL_TARGET = re.compile(r"(/pay(/status|/redeem)?|/access(/logout)?|data:.*|monero:.*)", re.S)
URL_ATTRIBUTES = {"href", "src", "action", "formaction", "srcset", "poster", "data", "background"}
SECURITY_HEADERS = ("Content-Security-Policy", "Referrer-Policy", "Cache-Control",
                    "X-Content-Type-Options", "X-Frame-Options")


@dataclass
class Element:
    tag: str
    attrs: dict[str, str]
    text: str = ""


@dataclass
class Page:
    """A parsed page; ``fields`` by id (value of inputs, text of textareas)."""

    source: str
    elements: list[Element] = field(default_factory=list)
    style: str = ""
    title: str = ""
    h1: str = ""

    def by_id(self, element_id: str) -> Element:
        found = [e for e in self.elements if e.attrs.get("id") == element_id]
        assert len(found) == 1, (element_id, [e.attrs for e in found])
        return found[0]

    def field(self, element_id: str) -> str:
        element = self.by_id(element_id)
        return element.text if element.tag == "textarea" else element.attrs.get("value", "")

    def all(self, tag: str) -> list[Element]:
        return [e for e in self.elements if e.tag == tag]

    def forms(self) -> list[tuple[str, dict[str, str]]]:
        """(action, hidden fields) of every form, in order."""
        out: list[tuple[str, dict[str, str]]] = []
        for e in self.elements:
            if e.tag == "form":
                out.append((e.attrs.get("action", ""), {}))
            elif e.tag == "input" and e.attrs.get("type") == "hidden" and out:
                out[-1][1][e.attrs["name"]] = e.attrs.get("value", "")
        return out

    def urls(self) -> list[str]:
        return [value for e in self.elements for name, value in e.attrs.items()
                if name in URL_ATTRIBUTES]


class _Parser(HTMLParser):
    def __init__(self, page: Page) -> None:
        super().__init__(convert_charrefs=True)
        self.page = page
        self.open: list[Element] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        element = Element(tag, {k: v if v is not None else "" for k, v in attrs})
        self.page.elements.append(element)
        if tag in ("textarea", "style", "title", "h1", "label", "button", "a", "p", "progress"):
            self.open.append(element)

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.open) - 1, -1, -1):
            if self.open[i].tag == tag:
                element = self.open.pop(i)
                if tag == "style":
                    self.page.style = element.text
                elif tag == "title":
                    self.page.title = element.text
                elif tag == "h1":
                    self.page.h1 = element.text
                break

    def handle_data(self, data: str) -> None:
        for element in self.open:
            element.text += data


def parse_page(source: str) -> Page:
    page = Page(source)
    parser = _Parser(page)
    parser.feed(source)
    parser.close()
    return page


def style_hash(style: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(style.encode()).digest()).decode() + "'"


def assert_safe_page(source: str) -> Page:
    """What every page must be: no script, no SVG, no style attribute, nothing remote
    (every URL attribute points at /pay, a data: image or the wallet), one <style>
    without url() or @import, and every visible field labelled, every image described."""
    page = parse_page(source)
    lowered = source.lower()
    for banned in ("<script", "<svg", "<iframe", "<object", "<embed", "<link rel=\"stylesheet",
                   "javascript:", "http://", "https://"):
        assert banned not in lowered, banned
    assert lowered.count("<style>") == 1 and "url(" not in page.style and "@import" not in page.style
    for element in page.elements:
        assert "style" not in element.attrs, element
        assert not any(name.startswith("on") for name in element.attrs), element
    for url in page.urls():
        assert LOCAL_TARGET.fullmatch(url), url
    for index, element in enumerate(page.elements):
        if element.tag in ("input", "textarea", "select", "progress") and element.attrs.get("type") != "hidden":
            labelled = any(e.attrs.get("for") == element.attrs.get("id") for e in page.all("label"))
            # a radio button sits inside its label: the element just before it
            wrapped = element.attrs.get("type") == "radio" and page.elements[index - 1].tag == "label"
            assert labelled or wrapped, element.attrs
    for image in page.all("img"):
        assert image.attrs.get("alt"), image.attrs
    return page


def zbar_decode(png: Path) -> list[str]:
    """Every QR code zbarimg (Debian's zbar-tools) reads in an image, as a phone would."""
    zbarimg = shutil.which("zbarimg")
    assert zbarimg, "zbarimg is missing (Debian package zbar-tools; bin/setup --test installs it)"
    done = subprocess.run([zbarimg, "--quiet", "--raw", "-Sdisable", "-Sqrcode.enable", str(png)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode in (0, 4), done.stderr  # 4: no code found
    return [line for line in done.stdout.splitlines() if line]
