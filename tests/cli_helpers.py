"""The command line, for tests in any folder: the real ``bin/anonticket``'s path, an
environment without the caller's anonticket settings, the one-line error check, an async
runner for commands that talk to a service in the test's loop, and every command path of the
parser (what ``--help`` and the docs must cover)."""

from __future__ import annotations

import argparse
import asyncio
import os

from anonticket.config import SETTINGS
from conftest import REPO

BIN = str(REPO / "bin" / "anonticket")


def clean_env(**settings: str) -> dict[str, str]:
    """The caller's environment without any anonticket setting, plus the given ones."""
    names = {s.name for s in SETTINGS}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(settings)
    return env


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


async def cli(env: dict[str, str], *args: str, stdin: str | None = None) -> tuple[int, str, str]:
    """The binary as a subprocess of the running loop, so a service in this loop keeps
    serving while the command talks to it."""
    proc = await asyncio.create_subprocess_exec(
        BIN, *args, env=env, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), 60)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and sub-command, ``()`` for the bare program, walking argparse's tree."""
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += command_paths(sub, prefix + (name,))
    return paths
