"""The README and the docs are checked against the code they describe: the reference pages'
tables (settings, metrics, commands, routes) name exactly what the code has, the README's
quick start is what CI runs, and every file they cite exists."""

from __future__ import annotations

import importlib
import re
from dataclasses import fields
from pathlib import Path

import yaml

from anonticket.cli.parser import build_parser
from anonticket.config import SETTINGS, Config, settings_table_markdown
from anonticket.runtime.metrics import Metrics
from cli_helpers import command_paths

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
DOCS = REPO / "docs"


def first_column(page: str, header: str) -> list[str]:
    """The first cell of every row of the table whose header row starts ``| <header> |``."""
    lines = page.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append(re.split(r"(?<!\\)\|", line)[1].strip())
    return rows


def test_settings_table_matches_the_declaration() -> None:
    page = (DOCS / "settings.md").read_text()
    match = re.search(r"<!-- settings-table:[^>]*-->\n(.*?)<!-- /settings-table -->", page, re.S)
    assert match, "settings table markers missing from docs/settings.md"
    assert match.group(1) == settings_table_markdown()


def test_config_and_settings_declare_the_same_fields() -> None:
    assert {f.name for f in fields(Config)} == {s.attr for s in SETTINGS}


def test_the_metrics_table_names_exactly_the_exported_metrics() -> None:
    """A metric added without its row fails, and so does a row left behind by a removed one."""
    exported = {metric.name + ("_total" if metric.type == "counter" else "")
                for metric in Metrics().registry.collect()}
    cells = first_column((DOCS / "metrics.md").read_text(), "Metric")
    documented = {name for cell in cells for name in re.findall(r"`(anonticket_\w+)", cell)}
    assert documented == exported


def test_the_command_table_names_every_command() -> None:
    """Each row starts with one command's words, and every command without sub-commands gets
    a row (one with them may have its own, as ``sandbox`` does)."""
    commands = {" ".join(path) for path in command_paths(build_parser()) if path}
    leaves = {c for c in commands if not any(other.startswith(c + " ") for other in commands)}
    rows = [cell.strip("`").split("`")[0] for cell in first_column((DOCS / "cli.md").read_text(), "Command")]
    documented = {max((c for c in commands if row == c or row.startswith(c + " ")), key=len, default=row)
                  for row in rows}
    assert leaves <= documented <= commands, (leaves - documented, documented - commands)


def test_the_api_tables_name_exactly_the_documented_routes() -> None:
    """Every route of anonticket/api/openapi.yaml is in docs/api.md's tables as `METHOD /path` (`*` for
    the check, which answers any method), and the page names no route the spec lacks."""
    spec = yaml.safe_load((REPO / "anonticket" / "api" / "openapi.yaml").read_text())
    routes = set()
    for path, operations in spec["paths"].items():
        if all(op.get("x-any-method") for op in operations.values()):
            routes.add(("*", path))
        else:
            routes |= {(method.upper(), path) for method in operations}
    named = set(re.findall(r"`(GET|POST|PUT|PATCH|DELETE|\*) (/[^\s`\[]*)", (DOCS / "api.md").read_text()))
    assert named == routes


def test_quick_start_is_two_commands() -> None:
    block = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["bin/setup && bin/anonticket serve",
                        "bin/setup --test && .venv/bin/python -m pytest"]
    ci = (REPO / ".ci" / "run").read_text()
    assert commands[1] in ci


# what a reader follows into the code and the tests: the docs, the production files, the
# build, bench and CI scripts, the code's and the tests' own comments (not the docs checks': they
# invent names on purpose)
CITING = ["README.md", "setup.cfg", "bin/anonticket", "bin/setup", ".ci/run", *sorted(
    str(p.relative_to(REPO)) for d in ("docs", "deploy", "systemd", "bench", "anonticket", "tests")
    for p in (REPO / d).rglob("*")
    if p.is_file() and p.suffix not in (".png", ".json", ".pyc")
    and "node_modules" not in p.parts and p.parent != REPO / "tests" / "docs")]
_PATH = re.compile(r"(?<![\w/.-])(?:anonticket|tests)/[\w/.*-]*")
# not paths: the receipt derivations' domain-separation tags (anonticket/domain/ids.py)
_TAGS = {"anonticket/pid/v1", "anonticket/token/v1", "anonticket/subaddress-transfer/v1"}
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
    """Every ``anonticket/…`` or ``tests/…`` path and ``anonticket.…`` module these files cite
    exists, so a move or a rename fails here, not in a reader's hands. A dotted name counts when it names
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
