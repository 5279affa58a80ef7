"""The test folders mirror the packages, and docs/testing.md says what each one holds.

pytest imports a test module by its file name, with its folder on ``sys.path`` (no
``__init__.py`` anywhere under tests/): so names must be unique across folders, and a test
module can import another test module only from its own folder — an import across folders
works or fails depending on which folder pytest happened to collect first. What two folders
share goes into a helper module beside conftest.py.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
TEST_FILES = sorted(path for path in TESTS.rglob("test_*.py") if "node_modules" not in path.parts)


def test_every_test_module_lives_in_a_folder() -> None:
    assert [path.name for path in TEST_FILES if path.parent == TESTS] == []


def test_test_module_names_are_unique() -> None:
    names = [path.name for path in TEST_FILES]
    assert sorted({name for name in names if names.count(name) > 1}) == []


def test_a_test_module_imports_test_modules_of_its_own_folder_only() -> None:
    wrong = []
    for path in TEST_FILES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith("test_") and not (path.parent / f"{name}.py").is_file():
                    wrong.append(f"{path.relative_to(REPO)} imports {name}")
    assert wrong == []


def test_docs_testing_names_every_test_folder() -> None:
    folders = {path.parent.relative_to(TESTS).parts[0] for path in TEST_FILES}
    page = (REPO / "docs" / "testing.md").read_text()
    listed = set(re.findall(r"^\| `tests/(\w+)/` \|", page, re.M))
    assert listed == folders
