"""A local PostgreSQL cluster from Debian's binaries, for development and for the test suite.

``make run`` uses it when ``WAPOOL_DATABASE_URL`` is not set; the tests start a throwaway one
(fsync off) that they may stop, kill and restart. When run as root, every PostgreSQL binary runs
as the ``postgres`` user through ``runuser``, and the data folder is given to that user.

    python -m wapool.devdb start|stop|status|url
    python -m wapool.devdb run -- COMMAND...   # start if needed, run COMMAND, stop what it started
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

DEFAULT_DIR = Path(".devdb")
DEFAULT_PORT = 54329
DATABASE = "wapool"
SUPERUSER = "postgres"


class ClusterError(RuntimeError):
    pass


def find_bindir() -> Path:
    """Where initdb and pg_ctl live: ``$PG_BINDIR``, Debian's newest version, or ``$PATH``."""
    if os.environ.get("PG_BINDIR"):
        return Path(os.environ["PG_BINDIR"])
    debian = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0,
    )
    if debian:
        return debian[-1].parent
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    raise ClusterError(
        "PostgreSQL server binaries not found: install Debian's postgresql package "
        "(apt-get install -y postgresql) or set PG_BINDIR"
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Cluster:
    """One PostgreSQL cluster in ``root`` (data in ``root/data``), listening on 127.0.0.1:port."""

    def __init__(self, root: Path, port: int, *, durable: bool = True) -> None:
        self.root = root.absolute()
        self.data = self.root / "data"
        self.port = port
        self.durable = durable
        self.bindir = find_bindir()

    def url(self, dbname: str = DATABASE) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def init(self) -> None:
        if (self.data / "PG_VERSION").exists():
            return
        self.root.mkdir(parents=True, exist_ok=True)
        self.root.chmod(0o755)  # the postgres user must reach the data folder
        self._check_reachable()
        self.data.mkdir(mode=0o700, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.data, SUPERUSER, SUPERUSER)
            shutil.chown(self.root, SUPERUSER, SUPERUSER)
        self._pg(
            "initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
            "--locale=C.UTF-8", "--no-instructions",
        )  # fmt: skip

    def _check_reachable(self) -> None:
        if os.geteuid() != 0:
            return
        probe = subprocess.run(
            ["runuser", "-u", SUPERUSER, "--", "test", "-x", str(self.root)],
            capture_output=True,
            check=False,
        )
        if probe.returncode != 0:
            raise ClusterError(
                f"the postgres user cannot reach {self.root} (a parent folder is private): "
                "set WAPOOL_DEVDB_DIR to a folder under a world-searchable path, "
                "e.g. WAPOOL_DEVDB_DIR=/var/tmp/wapool-devdb"
            )

    def start(self) -> None:
        self.init()
        if self.running():
            return
        options = [
            f"-p {self.port}",
            "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories='{self.root}'",
            "-c max_connections=200",
        ]
        if not self.durable:
            # Still survives `pg_ctl stop -m immediate` (the OS keeps what was written);
            # synchronous_commit stays on, or acknowledged commits could vanish.
            options += ["-c fsync=off", "-c full_page_writes=off"]
        # A session of its own, so that Ctrl-C in the terminal reaches the daemon, not PostgreSQL.
        self._pg(
            "pg_ctl", "-D", str(self.data), "-l", str(self.root / "postgresql.log"),
            "-o", " ".join(options), "-w", "-t", "60", "start",
            new_session=True,
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        if self.running():
            self._pg("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def running(self) -> bool:
        if not (self.data / "PG_VERSION").exists():
            return False
        result = subprocess.run(
            self._command("pg_ctl", "-D", str(self.data), "status"),
            capture_output=True,
            check=False,
        )
        return result.returncode == 0

    def ensure_database(self, dbname: str = DATABASE) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=10) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (dbname,))
            if exists.fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))

    def _command(self, binary: str, *args: str) -> list[str]:
        command = [str(self.bindir / binary), *args]
        if os.geteuid() == 0:
            return ["runuser", "-u", SUPERUSER, "--", *command]
        return command

    def _pg(self, binary: str, *args: str, new_session: bool = False) -> None:
        result = subprocess.run(
            self._command(binary, *args),
            capture_output=True,
            text=True,
            check=False,
            start_new_session=new_session,
            cwd=self.root,
        )
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()
            raise ClusterError(f"{binary} failed: {detail[-1] if detail else result.returncode}")


def _configured(name: str) -> str | None:
    """A setting from the environment or ``.env``, as wapool itself would find it."""
    if os.environ.get(name):
        return os.environ[name]
    from dotenv import dotenv_values

    return dotenv_values(".env").get(name) or None


def _development_key(state_dir: Path) -> Path:
    """A master key in the state directory (created once), so `make run` encrypts at rest as
    production does; never for production use (docs/encryption.md)."""
    from wapool.crypto import keyring

    path = state_dir / "master.key"
    if not path.exists():
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        keyring.write(path, [keyring.new_key()])
        print(f"devdb: development master key created at {path}", file=sys.stderr)
    return path


def _run_with_cluster(cluster: Cluster, command: Sequence[str]) -> int:
    started = False
    env = dict(os.environ)
    if _configured("WAPOOL_STATE_DIR") is None:
        env["WAPOOL_STATE_DIR"] = str(Path(".state").absolute())
    if _configured("WAPOOL_MASTER_KEY_FILE") is None:
        env["WAPOOL_MASTER_KEY_FILE"] = str(_development_key(Path(env["WAPOOL_STATE_DIR"])))
    if _configured("WAPOOL_DATABASE_URL") is None:
        started = not cluster.running()
        cluster.start()
        cluster.ensure_database()
        env["WAPOOL_DATABASE_URL"] = cluster.url()
        print(f"devdb: using the development cluster at {cluster.url()}", file=sys.stderr)
    child = subprocess.Popen(list(command), env=env)
    # The terminal delivers Ctrl-C to the child too; forward what the terminal does not.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: child.send_signal(signum))
    code = child.wait()
    if started:
        cluster.stop()
        print("devdb: development cluster stopped", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m wapool.devdb")
    parser.add_argument("action", choices=["start", "stop", "status", "url", "run"])
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    root = Path(os.environ.get("WAPOOL_DEVDB_DIR", DEFAULT_DIR))
    cluster = Cluster(root, int(os.environ.get("WAPOOL_DEVDB_PORT", DEFAULT_PORT)))
    try:
        if args.action == "start":
            cluster.start()
            cluster.ensure_database()
            print(cluster.url())
        elif args.action == "stop":
            cluster.stop()
        elif args.action == "status":
            print("running" if cluster.running() else "stopped")
        elif args.action == "url":
            print(cluster.url())
        else:
            command = args.command[1:] if args.command[:1] == ["--"] else args.command
            if not command:
                parser.error("run needs a command after --")
            return _run_with_cluster(cluster, command)
    except ClusterError as exc:
        print(f"devdb: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
