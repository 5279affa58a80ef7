"""The README is checked against the code it describes."""

from __future__ import annotations

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
