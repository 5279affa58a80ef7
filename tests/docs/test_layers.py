"""Imports go one way, and nowhere in a circle (house style): a wrong arrow fails here, not in review.

The rule is per PACKAGE (``anonticket/<package>/``), so a new module inherits its package's
rule without touching this file; only a new package needs a line in ``LAYERS``. Every import
counts — at module level, inside a function, under ``if TYPE_CHECKING:`` — because each is
an arrow a reader has to follow. docs/architecture.md draws the same rule, and each package's
``__init__.py`` docstring names what it may import; both are checked against ``LAYERS`` below.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOT = REPO / "anonticket"

# lowest first; a package may import its own modules and those of packages in LOWER rows
# only. Packages in one row are siblings and never import each other.
LAYERS: list[tuple[str, ...]] = [
    ("crypto",),
    ("domain",),
    ("config",),
    ("storage",),
    ("ledger",),
    ("monero",),
    ("runtime",),
    ("api", "monitor", "webhooks"),
    ("service",),
    ("client",),
    ("cli",),
]
# the private test chain: stdlib only, imports no service code, and only these import it
STANDALONE = {"regtest": {"cli"}}
# aiohttp.web (servers, requests, responses) belongs to the HTTP layer and what wires it up
WEB = {"api", "service", "cli"}


def _rank(layers: list[tuple[str, ...]]) -> dict[str, int]:
    return {name: level for level, row in enumerate(layers) for name in row}


def _module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def _modules(root: Path) -> dict[str, Path]:
    return {_module_name(root, path): path for path in sorted(root.rglob("*.py"))}


def _imports(path: Path) -> list[tuple[str, tuple[str, ...]]]:
    """Every import in the file, anywhere in it: (module, names imported from it)."""
    tree = ast.parse(path.read_text(), str(path))
    found: list[tuple[str, tuple[str, ...]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, ()) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}: use absolute imports")
            found.append((node.module or "", tuple(alias.name for alias in node.names)))
    return found


def _graph(root: Path) -> dict[str, set[str]]:
    """Module -> the project modules it imports. ``from pkg import mod`` is an arrow to
    ``pkg.mod``; ``from pkg import name`` one to ``pkg`` (its ``__init__``)."""
    modules = _modules(root)
    top = root.name
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for module, names in _imports(path):
            if module != top and not module.startswith(top + "."):
                continue
            subs = {f"{module}.{n}" for n in names if f"{module}.{n}" in modules}
            targets |= subs
            if len(subs) < len(names) or not names:
                targets.add(module)
        targets.discard(name)
        graph[name] = targets
    return graph


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def wrong_arrows(root: Path, layers: list[tuple[str, ...]] = LAYERS,
                 standalone: dict[str, set[str]] = STANDALONE) -> list[str]:
    rank = _rank(layers)
    wrong = []
    for module, targets in sorted(_graph(root).items()):
        source = _package(module)
        for target in sorted(targets):
            to = _package(target)
            if to == source:
                continue
            if source == "":
                wrong.append(f"{module} imports {target}: the top package imports nothing")
            elif source in standalone:
                wrong.append(f"{module} imports {target}: {source} stands alone")
            elif to in standalone:
                if source not in standalone[to]:
                    wrong.append(f"{module} imports {target}: only {sorted(standalone[to])} may")
            elif source not in rank or to not in rank:
                wrong.append(f"{module} imports {target}: a package without a layer")
            elif rank[to] >= rank[source]:
                wrong.append(f"{module} imports {target}: {to} is not below {source}")
    return wrong


def circles(root: Path) -> list[list[str]]:
    """The import cycles between modules (Tarjan's strongly connected components)."""
    graph = _graph(root)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:  # recursion depth is bounded by the number of modules
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in graph:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def web_users(root: Path, allowed: Iterable[str] = WEB) -> list[str]:
    allowed = set(allowed)
    return sorted(
        module for module, path in _modules(root).items()
        if _package(module) not in allowed
        and any(m.startswith("aiohttp.web") or (m == "aiohttp" and any(n.startswith("web") for n in names))
                for m, names in _imports(path)))


def test_every_package_has_a_layer() -> None:
    rank = _rank(LAYERS)
    for entry in sorted(ROOT.iterdir()):
        if entry.name in ("__init__.py", "__pycache__"):
            continue
        assert entry.is_dir() and (entry / "__init__.py").is_file(), \
            f"{entry}: the top package holds packages only (a layer or a capability each)"
        assert entry.name in rank or entry.name in STANDALONE, f"{entry} is not placed in a layer"


def test_imports_point_down() -> None:
    wrong = wrong_arrows(ROOT)
    assert not wrong, "imports against the layer rule:\n" + "\n".join(wrong)


def test_no_import_circles_even_inside_a_package() -> None:
    found = circles(ROOT)
    assert not found, "import circles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_nothing_below_api_uses_aiohttp_web() -> None:
    assert web_users(ROOT) == []


def test_regtest_is_stdlib_only() -> None:
    for module, path in _modules(ROOT / "regtest").items():
        for imported, _ in _imports(path):
            top = imported.split(".")[0]
            assert top in sys.stdlib_module_names or imported.startswith("anonticket.regtest"), \
                f"{module} imports {imported}"


def _allowed(package: str) -> list[str]:
    rank = _rank(LAYERS)
    below = [name for row in LAYERS[:rank[package]] for name in row]
    return below + sorted(name for name, users in STANDALONE.items() if package in users)


def test_each_package_docstring_says_what_it_may_import() -> None:
    """Each ``__init__.py`` ends its docstring with "May import: a, b, c." (or "nothing"):
    the rule a reader sees in the folder is the rule this test enforces."""
    for package in [name for row in LAYERS for name in row] + sorted(STANDALONE):
        doc = ast.get_docstring(ast.parse((ROOT / package / "__init__.py").read_text())) or ""
        allowed = _allowed(package) if package not in STANDALONE else []
        expected = "May import: " + (", ".join(allowed) if allowed else "nothing") + "."
        assert expected in " ".join(doc.split()), f"anonticket/{package}/__init__.py: {expected!r}"


def test_the_architecture_page_draws_the_same_rule() -> None:
    """docs/architecture.md and the map in anonticket/__init__.py show this very rule, and the
    page's table names every package."""
    arrow = " ← ".join("{" + ", ".join(row) + "}" if len(row) > 1 else row[0] for row in LAYERS)
    page = (REPO / "docs" / "architecture.md").read_text()
    assert arrow in " ".join(page.split()), arrow
    top = ast.get_docstring(ast.parse((ROOT / "__init__.py").read_text())) or ""
    assert arrow in " ".join(top.split()), arrow
    for package in [name for row in LAYERS for name in row] + sorted(STANDALONE):
        assert f"| `{package}/` |" in page, package
        assert f"    {package}/" in top, package


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "anonticket"


@pytest.mark.parametrize("files, expected", [
    # an upward arrow, from a module the rule has never heard of: its package's rule applies
    ({"anonticket/storage/new_part.py": "from anonticket.api.public import redeem\n",
      "anonticket/api/public.py": ""},
     ["anonticket.storage.new_part imports anonticket.api.public: api is not below storage"]),
    # siblings never import each other, even lazily
    ({"anonticket/monitor/loop.py": "def f():\n    from anonticket.webhooks import sender\n",
      "anonticket/webhooks/sender.py": ""},
     ["anonticket.monitor.loop imports anonticket.webhooks.sender: webhooks is not below monitor"]),
    # a type-only import is an arrow too
    ({"anonticket/domain/ids.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                  "    from anonticket.ledger.views import Ledger\n",
      "anonticket/ledger/views.py": ""},
     ["anonticket.domain.ids imports anonticket.ledger.views: ledger is not below domain"]),
    ({"anonticket/regtest/actions.py": "import anonticket.domain.ids\n",
      "anonticket/domain/ids.py": ""},
     ["anonticket.regtest.actions imports anonticket.domain.ids: regtest stands alone"]),
    ({"anonticket/service/app.py": "from anonticket.regtest import RegtestNetwork\n",
      "anonticket/regtest/__init__.py": ""},
     ["anonticket.service.app imports anonticket.regtest: only ['cli'] may"]),
    ({"anonticket/ledger/views.py": "from anonticket.storage import Storage\n",
      "anonticket/storage/__init__.py": "", "anonticket/cli/parser.py": "import anonticket.regtest\n",
      "anonticket/regtest/__init__.py": ""}, []),
])
def test_the_rule_catches_a_wrong_arrow(tmp_path: Path, files: dict[str, str],
                                         expected: list[str]) -> None:
    assert wrong_arrows(_write(tmp_path, files)) == expected


def test_the_circle_and_web_checks_catch_a_broken_tree(tmp_path: Path) -> None:
    """Two circles (one through a function-level import, one through a type-only import) and
    aiohttp.web below the API; the aiohttp client below it and aiohttp.web in the API are fine."""
    root = _write(tmp_path, {
        "anonticket/api/public.py": "from aiohttp import web\n"
                                    "def routes():\n    from anonticket.api.checkout import add\n",
        "anonticket/api/checkout.py": "from anonticket.api.public import STATE\n",
        "anonticket/api/errors.py": "",
        "anonticket/storage/core.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                      "    from anonticket.storage import outbox\n",
        "anonticket/storage/outbox.py": "from anonticket.storage.core import StorageCore\n",
        "anonticket/storage/payments.py": "from anonticket.storage.core import StorageCore\n",
        "anonticket/runtime/state.py": "from aiohttp import web\n",
        "anonticket/monero/wallet_rpc.py": "import aiohttp\n",
        "anonticket/ledger/views.py": "import aiohttp.web_response\n",
    })
    assert sorted(circles(root)) == [["anonticket.api.checkout", "anonticket.api.public"],
                                     ["anonticket.storage.core", "anonticket.storage.outbox"]]
    assert web_users(root) == ["anonticket.ledger.views", "anonticket.runtime.state"]
