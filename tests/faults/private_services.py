"""A PostgreSQL cluster and a RabbitMQ node that one test owns, so it can stop and start
them. The machine's own servers (5432, 5672) are shared with other test runs and must
never be restarted."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from glob import glob
from pathlib import Path

import amqp.exceptions
import kombu.exceptions
import psycopg
import pytest
from kombu import Connection

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")
START_TIMEOUT = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _pg_bin() -> Path:
    found = sorted(glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                   key=lambda p: int(Path(p).parts[-3]))
    if not found:
        pytest.fail("PostgreSQL server binaries not found under /usr/lib/postgresql")
    return Path(found[-1]).parent


class PrivatePostgres:
    """A cluster in a temporary directory on a free port, run by the ``postgres`` user
    (initdb and postgres refuse to run as root)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.bin = _pg_bin()

    def _as_postgres(self, *args: str, timeout: float = 120) -> None:
        command = [str(a) for a in args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            log = self.root / "postgres.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise AssertionError(f"{' '.join(command)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}\n{tail}")

    def init(self) -> None:
        self._as_postgres(self.bin / "initdb", "-D", str(self.data), "-U", "postgres",
                          "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync")

    def start(self) -> None:
        # fsync off: the data only has to outlive a server restart, not a machine crash.
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c fsync=off -c full_page_writes=off -c max_connections=200")
        self._as_postgres(self.bin / "pg_ctl", "-D", str(self.data), "-l",
                          str(self.root / "postgres.log"), "-w", "-t", str(START_TIMEOUT),
                          "-o", options, "start")

    def stop(self, mode: str = "fast") -> None:
        """``fast`` ends every session at once (what a restart does to clients)."""
        self._as_postgres(self.bin / "pg_ctl", "-D", str(self.data), "-m", mode, "-w",
                          "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/postgres",
                             autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


class PrivateRabbitMQ:
    """A node of its own (name, ports, data, no plugins) beside the machine's one. It runs
    in the foreground as a child of the test, so nothing of it outlives the test."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"blendq-fault-{uuid.uuid4().hex[:8]}@localhost"
        self.process: subprocess.Popen[bytes] | None = None
        config = root / "rabbitmq.conf"
        config.write_text(f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
                          "disk_free_limit.absolute = 50MB\n"
                          "loopback_users.guest = true\n")
        (root / "rabbitmq-env.conf").write_text("")
        (root / "enabled_plugins").write_text("[].\n")
        # Its own HOME, so its Erlang cookie is its own and the machine's node is untouched.
        self.env = {
            **os.environ, "HOME": str(root),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_CONFIG_FILE": str(config),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(root / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(root / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(root / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(root / "log"),
            "RABBITMQ_PID_FILE": str(root / "rabbitmq.pid"),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
        }

    def start(self) -> None:
        log = (self.root / "server.out").open("ab")
        # Foreground: the start script turns SIGTERM into a clean node stop.
        self.process = subprocess.Popen([str(RABBITMQ_BIN / "rabbitmq-server")], env=self.env,
                                        cwd=self.root, stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            if self._accepts_clients():
                return
            time.sleep(0.3)
        output = (self.root / "server.out").read_text(errors="replace")[-3000:]
        self._kill()
        raise AssertionError(f"private RabbitMQ {self.node} did not start:\n{output}")

    def _accepts_clients(self) -> bool:
        # The AMQP listener opens last in a node's boot, so a client that logs in finds it
        # ready. Not rabbitmqctl: each call boots an Erlang VM, and beside busy torch
        # workers on two cores that took 30-60 s here.
        try:
            with Connection(self.url(), connect_timeout=2) as connection:
                connection.connect()
            return True
        except (OSError, kombu.exceptions.OperationalError, amqp.exceptions.AMQPError):
            return False

    def stop(self) -> None:
        """A clean node stop (what ``rabbitmqctl stop`` does): client connections are
        closed and unacked messages go back to their durable queues."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._kill()
            raise AssertionError(f"private RabbitMQ {self.node} did not stop in 60 s") from None
        self.process = None

    def _kill(self) -> None:
        if self.process is None:
            return
        with suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    def url(self, vhost: str = "") -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/{vhost}"


def _root(prefix: str) -> Path:
    # pytest's tmp_path is root-only (0700); the postgres user must reach this one.
    root = Path(tempfile.mkdtemp(prefix=prefix))
    root.chmod(0o755)
    return root


@contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    root = _root("blendq-pg-")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    server = PrivatePostgres(root)
    try:
        server.init()
        server.start()
        yield server
    finally:
        if server.running():
            with suppress(AssertionError):
                server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def private_rabbitmq() -> Iterator[PrivateRabbitMQ]:
    if not (RABBITMQ_BIN / "rabbitmq-server").exists():
        pytest.fail("RabbitMQ is not installed (ops/scripts/services.sh installs it)")
    root = _root("blendq-mq-")
    server = PrivateRabbitMQ(root)
    try:
        server.start()
        yield server
    finally:
        if server.process is not None:
            with suppress(AssertionError):
                server.stop()
        shutil.rmtree(root, ignore_errors=True)
