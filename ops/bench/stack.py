"""blendq on this machine, for benchmarks and the integration tests: the dispatcher and the
workers started with ``manage.py``, as admins start them, on a database and a RabbitMQ
vhost of their own (a dispatcher relays whatever it finds in its outbox, and a worker
takes whatever its queues hold, so two stacks must share neither)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from sqlalchemy import func
from sqlalchemy.engine import make_url
from sqlmodel import Session, col, create_engine, select

from db.models import Candidate, Comparison, Fusion, Job, Ranking, Request
from orchestration.settings import Settings

REPO = Path(__file__).resolve().parents[2]
GENERATORS = ("tiny-a", "tiny-b", "tiny-c")
START_TIMEOUT = 120
ADMIN_URL = os.environ.get("BLENDQ_BENCH_ADMIN_URL",
                           "postgresql://postgres@127.0.0.1:5432/postgres")
BROKER_HOST_URL = os.environ.get("BLENDQ_BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672")


# ``manage.py ARGS`` run somehow: (args, cwd, env, timeout) -> what subprocess.run returns.
ManageRunner = Callable[[Sequence[str], Path, dict[str, str], float],
                        "subprocess.CompletedProcess[str]"]


class StackError(AssertionError):
    """A process of the stack would not start or a command failed. An AssertionError, so
    pytest reports it as a failed check."""


@dataclass
class Stack:
    settings: Settings
    env: dict[str, str]
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # launched, not yet waited for: name -> (log, ready marker)
    _starting: dict[str, tuple[Path, str]] = field(default_factory=dict)
    # How ``manage`` runs a command; None: ``python manage.py ARGS`` (the tests fork each
    # command from a process that has imported the command line: tests/manage_server.py).
    runner: ManageRunner | None = None

    def manage(self, *args: str, check: bool = True,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
        if self.runner is not None:
            result = self.runner(args, REPO, self.env, timeout)
        else:
            result = subprocess.run([sys.executable, "manage.py", *args], cwd=REPO,
                                    env=self.env, capture_output=True, text=True,
                                    timeout=timeout)
        if check and result.returncode != 0:
            raise StackError(f"manage.py {' '.join(args)} exited {result.returncode}:\n"
                             f"{result.stdout}\n{result.stderr}")
        return result

    def start(self, name: str, *args: str, ready: str, command: Sequence[str] = (),
              env: dict[str, str] | None = None) -> None:
        """Start ``manage.py ARGS`` (or ``command``) and wait for ``ready`` in its log;
        ``env`` adds settings for this process only."""
        self.launch(name, *args, ready=ready, command=command, env=env)
        self.wait_ready()

    def launch(self, name: str, *args: str, ready: str, command: Sequence[str] = (),
               env: dict[str, str] | None = None) -> None:
        """Start a process without waiting for it: ``wait_ready`` waits for every process
        launched since the last wait. Several launched at once load their imports and
        models side by side, which on two cores takes about half as long as one by one."""
        log = self.logs / f"{name}.log"
        if log.exists():
            # A restart: keep the old log beside, and wait for this process's own marker.
            log.rename(log.with_name(f"{name}.{time.time_ns()}.log"))
        with log.open("ab") as handle:
            self.processes[name] = subprocess.Popen(
                list(command) or [sys.executable, "manage.py", *args], cwd=REPO,
                env={**self.env, **(env or {})}, stdout=handle, stderr=subprocess.STDOUT)
        self._starting[name] = (log, ready)

    def wait_ready(self) -> None:
        """Until every launched process has logged its marker. The limit grows with how
        many start together (they share the cores): START_TIMEOUT per two processes."""
        waiting = dict(self._starting)
        self._starting.clear()
        deadline = time.monotonic() + START_TIMEOUT * max(1.0, len(waiting) / 2)
        while waiting:
            for name, (log, marker) in list(waiting.items()):
                if marker in log.read_text(errors="replace"):
                    del waiting[name]
                elif self.processes[name].poll() is not None:
                    raise StackError(
                        f"{name} exited {self.processes[name].returncode} before it was "
                        f"ready:\n{log.read_text(errors='replace')[-3000:]}")
            if not waiting:
                return
            if time.monotonic() > deadline:
                name, (log, _) = next(iter(waiting.items()))
                raise StackError(f"{', '.join(waiting)} did not start; {name}'s log:\n"
                                 f"{log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)

    def start_all(self, generators: Sequence[str] = GENERATORS) -> None:
        """The dispatcher, one worker per generator, the ranking and the fusion worker,
        started side by side."""
        self.launch("dispatcher", "dispatcher", "--poll", "0.5", ready="dispatcher.started")
        for model in generators:
            self.launch(f"gen-{model}", "worker", "generate", "--model", model, ready=" ready.")
        self.launch("rank", "worker", "rank", ready=" ready.")
        self.launch("fuse", "worker", "fuse", ready=" ready.")
        self.wait_ready()

    def pid(self, name: str) -> int:
        return self.processes[name].pid

    def kill(self, name: str) -> None:
        """SIGKILL: no shutdown, no ack, no cleanup, as when a machine dies."""
        process = self.processes.pop(name)
        self._starting.pop(name, None)
        process.kill()
        process.wait()

    def stop(self, *names: str) -> None:
        """SIGTERM (a warm shutdown) to each, then wait for them, side by side: one still
        running after 20 s is killed."""
        stopping = [self.processes.pop(name) for name in names]
        for name in names:
            self._starting.pop(name, None)
        for process in stopping:
            process.terminate()
        deadline = time.monotonic() + 20
        for process in stopping:
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop_all(self) -> None:
        self.stop(*self.processes)


def stack_env(settings: Settings, database_url: str, broker_url: str,
              extra: dict[str, str] | None = None) -> dict[str, str]:
    # The built-in tiny models, whatever this shell points at (``extra`` may name a file).
    inherited = {k: v for k, v in os.environ.items() if k != "BLENDQ_REGISTRY_PATH"}
    return {**inherited, "BLENDQ_ENV": "test", "BLENDQ_DATABASE_URL": database_url,
            "BLENDQ_BROKER_URL": broker_url, "BLENDQ_MODEL_CACHE": str(settings.model_cache),
            "BLENDQ_LOG_LEVEL": "INFO", "PYTHONUNBUFFERED": "1",
            # Five worker processes share the machine: each taking every core (the torch
            # default) made a 40-prompt job about ten times slower on 2 cores.
            "BLENDQ_TORCH_THREADS": os.environ.get("BLENDQ_TORCH_THREADS", "1"),
            **(extra or {})}


@contextmanager
def fresh_database(name: str, admin_url: str = ADMIN_URL) -> Iterator[str]:
    """A new database migrated with the same code ``manage.py db upgrade`` runs, dropped
    afterwards."""
    from ops import dbadmin

    url = make_url(admin_url).set(drivername="postgresql+psycopg", database=name)
    rendered = url.render_as_string(hide_password=False)
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        dbadmin.upgrade(rendered)
        yield rendered
    finally:
        from db.engine import dispose_engines

        dispose_engines()
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def rabbitmqctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=120)


@contextmanager
def private_vhost(prefix: str = "blendq-test", host_url: str = BROKER_HOST_URL) -> Iterator[str]:
    """A vhost of the machine's RabbitMQ, deleted afterwards (with what it holds)."""
    if shutil.which("rabbitmqctl") is None:
        raise StackError("rabbitmqctl not found: RabbitMQ must be installed "
                         "(ops/scripts/services.sh)")
    vhost = f"{prefix}-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    try:
        rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
        yield f"{host_url.rstrip('/')}/{vhost}"
    finally:
        rabbitmqctl("delete_vhost", vhost)


@contextmanager
def running_stack(settings: Settings, name: str, logs: Path, *,
                  database_url: str | None = None, broker_url: str | None = None,
                  env: dict[str, str] | None = None,
                  start: bool = True) -> Iterator[Stack]:
    """A stack on ``database_url`` and ``broker_url`` (already migrated and created), or on
    a fresh database and vhost made here; ``env`` adds settings for every process. With
    ``start`` the dispatcher and every worker run before it is yielded; they are stopped
    when the block ends."""
    with ExitStack() as owned:
        if database_url is None:
            database_url = owned.enter_context(
                fresh_database(f"blendq_{name}_{os.getpid()}"))
        if broker_url is None:
            broker_url = owned.enter_context(private_vhost())
        stack = Stack(settings.model_copy(update={"broker_url": broker_url,
                                                  "database_url": database_url}),
                      stack_env(settings, database_url, broker_url, env), logs)
        # Build the tiny models once, before several processes want them at once.
        from workers.tiny_models import ensure_tiny_models

        ensure_tiny_models(settings.model_cache / "tiny")
        try:
            if start:
                stack.start_all()
            yield stack
        finally:
            stack.stop_all()


def memory_mib(pid: int, field: str = "VmHWM") -> float:
    """A memory figure of a live process from /proc: VmHWM, the most resident memory it
    ever had, or VmRSS, what it has now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no {field} for process {pid}")


def write_prompts(path: Path, n: int, params: dict[str, int] | None = None) -> Path:
    """``n`` short native request lines, every other one with an input."""
    with path.open("w") as handle:
        for i in range(n):
            line: dict[str, object] = {"custom_id": f"req-{i:05d}",
                                       "instruction": f"Question {i}: name a colour.",
                                       "input": "" if i % 2 else f"context {i}"}
            if params:
                line["params"] = params
            handle.write(json.dumps(line) + "\n")
    return path


TERMINAL = {"completed", "failed", "cancelled", "expired"}


def wait_for_job(database_url: str, job_id: str, timeout: float,
                 every: float = 0.5, report: float | None = None) -> Job:
    """Poll until the job ends; with ``report``, print its counts that often (seconds)."""
    engine = create_engine(database_url, pool_pre_ping=True)
    deadline = time.monotonic() + timeout
    next_report = time.monotonic() + (report or 0)
    try:
        while True:
            with Session(engine) as session:
                job = session.get(Job, job_id)
                assert job is not None, job_id
            if job.status in TERMINAL:
                return job
            if report and time.monotonic() >= next_report:
                print(f"  {job.status}: {job.completed} completed, {job.failed} failed "
                      f"of {job.total}", flush=True)
                next_report += report
            if time.monotonic() > deadline:
                raise StackError(f"job {job_id} still {job.status} after {timeout:.0f}s")
            time.sleep(every)
    finally:
        engine.dispose()


def stored_counts(database_url: str, job_id: str) -> dict[str, int]:
    """Rows each stage stored for the job's requests."""
    engine = create_engine(database_url)
    try:
        with Session(engine) as session:
            ids = select(Request.id).where(Request.job_id == job_id)
            return {table.__tablename__: session.exec(
                select(func.count()).select_from(table).where(
                    col(table.request_id).in_(ids))).one()
                for table in (Candidate, Comparison, Ranking, Fusion)}
    finally:
        engine.dispose()
