"""Imports go one way (house style): a wrong arrow fails here, not in review."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "anonticket"

# lower numbers are lower layers; a module may import only from strictly lower layers
# (or from its own package, e.g. api.internal reusing api.public)
LAYERS = {
    "timestamp": -1,  # below webhook, which stamps its events
    "errors": 0, "gc_pause": 0, "batching": 0, "crypto": 0,
    "domain": 1, "amount": 0, "config": 1, "wal_checkpoint": 1, "webhook": 0,
    "address": 2, "storage": 2, "cache": 2, "key_index": 2, "metrics": 2, "wallet_rpc": 2,
    "unix_socket": 2, "sd_notify": 2, "payment_uri": 2,
    "ledger": 3, "scan": 3, "payment_request": 3, "merchant": 3,
    "state": 4,
    "api": 5, "monitor": 5, "housekeeping": 5, "webhook_sender": 5, "leadership": 5,
    "app": 6, "admin_client": 6, "maintenance": 6,
    "sandbox": 7, "command": 7,
    "cli": 8,
}
STANDALONE = {"regtest"}  # the dev/test chain: stdlib only, no service code
BELOW_API = {name for name, level in LAYERS.items() if level < LAYERS["api"]}


def _top(module: str) -> str:
    return module.split(".")[1] if module.startswith("anonticket.") else ""


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.level:
                raise AssertionError(f"{path}: use absolute imports")
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).with_suffix("")
        name = rel.parts[0]
        if name == "__init__" or name == "__main__":
            continue
        out.append((name, path))
    return out


def test_every_module_has_a_layer() -> None:
    for name, path in _modules():
        assert name in LAYERS or name in STANDALONE, f"{path} is not placed in a layer"


def test_imports_point_down() -> None:
    wrong = []
    for name, path in _modules():
        for imported in _imports(path):
            target = _top(imported)
            if not target or target == name or target not in LAYERS | dict.fromkeys(STANDALONE, 0):
                continue
            if name in STANDALONE:
                wrong.append(f"{path.name} ({name}) imports {imported}: regtest must stand alone")
            elif target in STANDALONE:
                if LAYERS[name] < LAYERS["sandbox"]:
                    wrong.append(f"{path.name} ({name}) imports {imported}")
            elif LAYERS[target] >= LAYERS[name]:
                wrong.append(f"{path.name} ({name}) imports {imported}")
    assert not wrong, "imports against the layer rule:\n" + "\n".join(wrong)


def test_nothing_below_api_uses_aiohttp_web() -> None:
    for name, path in _modules():
        if name in BELOW_API or name in STANDALONE:
            imports = _imports(path)
            assert not any(i == "aiohttp.web" or i.startswith("aiohttp.web") for i in imports), path


def test_the_rule_catches_a_wrong_arrow(tmp_path: Path) -> None:
    bad = tmp_path / "storage.py"
    bad.write_text("from anonticket.api.public import redeem\n")
    imported = _imports(bad)
    assert any(LAYERS[_top(i)] >= LAYERS["storage"] for i in imported if _top(i) in LAYERS)
