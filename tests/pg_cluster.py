"""Throwaway PostgreSQL clusters for the tests (Debian ``postgresql-15``).

``initdb`` refuses to run as root, so as root every server command runs as the
``postgres`` user through ``runuser``, in a ``mkdtemp`` under /tmp: pytest's ``tmp_path``
lives below a 0700 root directory that user cannot enter. A cluster listens on a Unix
socket in its own directory only (no TCP port to collide on) with ``fsync=off``: what is
tested is our SQL and our failover, not the disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import tiers

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))
_AS_ROOT = os.geteuid() == 0


def missing() -> str | None:
    """Why no cluster can be started here, or None."""
    if not (PG_BIN / "initdb").is_file():
        return f"PostgreSQL binaries not found in {PG_BIN} (bin/setup --test installs postgresql-15)"
    if _AS_ROOT and shutil.which("runuser") is None:
        return "running as root without runuser (util-linux): initdb refuses root"
    if _AS_ROOT:
        try:
            import pwd
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no postgres user (installed with postgresql-15)"
    return None


def _run(*argv: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    prefix = ["runuser", "-u", "postgres", "--"] if _AS_ROOT else []
    return subprocess.run([*prefix, *argv], check=check, timeout=timeout,
                          capture_output=True, text=True)


def _own(path: Path) -> None:
    if _AS_ROOT:
        shutil.chown(path, "postgres", "postgres")


@dataclass
class Cluster:
    """One server: ``data`` directory, socket and log in ``home``; ``port`` names the
    socket file (``.s.PGSQL.<port>``), so two clusters can share nothing but the host."""

    home: Path
    port: int = 5432
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def log(self) -> Path:
        return self.home / "log"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql:///{database}?host={self.home}&port={self.port}&user=postgres"

    def init(self) -> None:
        _run(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres",
             "--no-sync", "-E", "UTF8", "--locale=C")

    def start(self, cpus: str | None = None) -> None:
        """``cpus`` pins the server (and every backend it forks) with taskset, as the
        benchmark pins the service: the database is part of the service's core."""
        options = [f"-k {self.home}", "-c listen_addresses=", f"-p {self.port}",
                   "-c fsync=off", "-c full_page_writes=off", "-c synchronous_commit=on"]
        options += [f"-c {name}={value}" for name, value in self.settings.items()]
        pin = ["taskset", "-c", cpus] if cpus else []
        _run(*pin, str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
             "-t", "60", "-o", " ".join(options), "start")

    def stop(self, mode: str = "fast") -> None:
        _run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop",
             check=False)

    def promote(self) -> None:
        _run(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-t", "60", "promote")

    def psql(self, sql: str, database: str = "postgres") -> str:
        done = _run(str(PG_BIN / "psql"), "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1",
                    "-h", str(self.home), "-p", str(self.port), "-U", "postgres",
                    "-d", database, "-c", sql)
        return done.stdout.strip()

    def create_database(self) -> str:
        """A fresh empty database; its name (unique, so tests never see each other's rows)."""
        name = "t_" + uuid.uuid4().hex[:12]
        self.psql(f"CREATE DATABASE {name} TEMPLATE template0 STRATEGY file_copy")
        return name

    def drop_database(self, name: str) -> None:
        self.psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def base_backup_to(self, other: Cluster) -> None:
        """Make ``other`` a streaming standby of this cluster (``-R`` writes its
        primary_conninfo and standby.signal)."""
        _run(str(PG_BIN / "pg_basebackup"), "-D", str(other.data), "-h", str(self.home),
             "-p", str(self.port), "-U", "postgres", "-R", "-X", "stream", "--no-sync",
             "-c", "fast", "-d", f"application_name={other.name}")

    @property
    def name(self) -> str:
        return f"node{self.port}"


def new_home() -> Path:
    home = Path(tempfile.mkdtemp(prefix="pg.", dir="/tmp"))
    os.chmod(home, 0o755)
    _own(home)
    return home


def start_cluster(port: int = 5432, cpus: str | None = None, **settings: str) -> Cluster:
    tiers.starting("a PostgreSQL cluster")
    cluster = Cluster(new_home(), port, dict(settings))
    cluster.init()
    cluster.start(cpus)
    return cluster


def remove(cluster: Cluster) -> None:
    cluster.stop("immediate")
    shutil.rmtree(cluster.home, ignore_errors=True)
