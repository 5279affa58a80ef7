"""The README and the docs are checked against the code they describe."""

from __future__ import annotations

import importlib
import re
from dataclasses import fields
from pathlib import Path

from anonticket.config import SETTINGS, Config, settings_table_markdown
from anonticket.runtime.metrics import Metrics

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()


def test_settings_table_matches_the_declaration() -> None:
    match = re.search(r"<!-- settings-table:[^>]*-->\n(.*?)<!-- /settings-table -->", README, re.S)
    assert match, "settings table markers missing from README"
    assert match.group(1) == settings_table_markdown()


def test_config_and_settings_declare_the_same_fields() -> None:
    assert {f.name for f in fields(Config)} == {s.attr for s in SETTINGS}


def test_every_metric_is_documented() -> None:
    names = {metric.name for metric in Metrics().registry.collect()}
    for name in names:
        shown = name + "_total" if f"{name}_total" in README else name
        assert shown in README, f"{name} is not documented in the README"


def test_quick_start_is_two_commands() -> None:
    block = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["bin/setup && bin/anonticket serve",
                        "bin/setup --test && .venv/bin/python -m pytest"]
    ci = (Path(__file__).resolve().parent.parent / ".ci" / "run").read_text()
    assert commands[1] in ci


REPO = Path(__file__).resolve().parent.parent
# what a reader follows into the code: the docs, the production files, the build and bench
CITING = ["README.md", "setup.cfg", "bin/anonticket", *sorted(
    str(p.relative_to(REPO)) for d in ("docs", "deploy", "systemd", "bench")
    for p in (REPO / d).rglob("*") if p.is_file() and p.suffix not in (".png", ".json"))]
_PATH = re.compile(r"(?<![\w/.-])anonticket/[\w/.*-]*")
# not paths: the receipt derivations' domain-separation tags (anonticket/domain/ids.py)
_TAGS = {"anonticket/pid/v1", "anonticket/token/v1"}
_DOTTED = re.compile(r"(?<![\w/.-])anonticket(?:\.[A-Za-z_]\w*)+")


def _resolves(dotted: str) -> bool:
    """``anonticket.a.b.name``: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for n in range(len(parts), 1, -1):
        try:
            target = importlib.import_module(".".join(parts[:n]))
        except ImportError:
            continue
        for name in parts[n:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


def test_cited_code_exists() -> None:
    """Every ``anonticket/…`` path and ``anonticket.…`` module these files cite exists, so a
    move or a rename fails here, not in a reader's hands. A dotted name counts when it names
    one of the packages (``anonticket.db`` is a file name, ``anonticket.service`` also a unit's)."""
    packages = {p.name for p in (REPO / "anonticket").iterdir() if (p / "__init__.py").is_file()}
    missing = []
    for name in CITING:
        text = (REPO / name).read_text()
        for path in {m.rstrip(".,:;)") for m in _PATH.findall(text)} - _TAGS:
            if not (list(REPO.glob(path)) if "*" in path else (REPO / path).exists()):
                missing.append(f"{name}: {path}")
        for dotted in set(_DOTTED.findall(text)):
            if dotted.split(".")[1] in packages and not _resolves(dotted):
                missing.append(f"{name}: {dotted}")
    assert not missing, "\n".join(sorted(missing))
