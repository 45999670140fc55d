"""A PostgreSQL for the tests: the machine's server at 127.0.0.1:5432 when it answers (user
``postgres``, or ``EDGEWISE_TEST_POSTGRES``, a DSN with a user that may create databases), else a
private ``postgres`` started with ``initdb`` in a temporary folder on a free port (as the
``postgres`` user when run as root). Each test gets a database of its own, dropped after it.
``EDGEWISE_TEST_POSTGRES=private`` forces the private server."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

MACHINE = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


def _answers(dsn: str) -> bool:
    try:
        psycopg.connect(dsn, connect_timeout=3).close()
    except psycopg.Error:
        return False
    return True


def _binary(name: str) -> str:
    found = shutil.which(name)
    if not found:
        candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
        found = candidates[-1] if candidates else None
    if not found:
        raise RuntimeError(f"no {name}: install PostgreSQL (apt-get install postgresql)")
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class PrivateServer:
    """``initdb`` + ``postgres`` in a temporary folder, trust authentication on 127.0.0.1."""

    def __init__(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="edgewise-postgres-")
        self.port = _free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            shutil.chown(self._dir, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        data = Path(self._dir, "data")
        initdb = [_binary("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"]
        subprocess.run([*self._as, *initdb, "-E", "UTF8"], check=True, capture_output=True)
        postgres = str(Path(_binary("initdb")).resolve().with_name("postgres"))
        self._proc = subprocess.Popen(
            [*self._as, postgres, "-D", str(data), "-p", str(self.port), "-k", self._dir,
             "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
            stdout=subprocess.DEVNULL, stderr=open(Path(self._dir, "log"), "wb"),  # noqa: SIM115
        )  # fmt: skip
        self.dsn = f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"
        deadline = time.monotonic() + 60
        while not _answers(self.dsn):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(Path(self._dir, "log").read_text(errors="replace"))
            time.sleep(0.1)  # the server's own readiness has no event to wait on

    def close(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        shutil.rmtree(self._dir, ignore_errors=True)


@contextmanager
def server() -> Iterator[str]:
    """The DSN of a server's maintenance database, for as long as the block runs."""
    wanted = os.environ.get("EDGEWISE_TEST_POSTGRES", MACHINE)
    if wanted != "private" and _answers(wanted):
        yield wanted
        return
    private = PrivateServer()
    try:
        yield private.dsn
    finally:
        private.close()


@contextmanager
def database(admin_dsn: str) -> Iterator[str]:
    """A fresh database with a random name on the server; its DSN, dropped afterwards."""
    name = f"edgewise_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(**{**conninfo_to_dict(admin_dsn), "dbname": name})
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
