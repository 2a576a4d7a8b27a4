"""Workers on another host: a generator and the ranking worker run in a network namespace
of their own (own hostname, own model cache, no registry file), reaching PostgreSQL and
RabbitMQ only through a veth pair the test makes (tests/netns.py); the dispatcher, a second
generator and the fusion worker run on this host. The registry lives in PostgreSQL, filled
with ``manage.py models register`` under names the built-in registry does not have, so a
worker that read anything but the database could not serve them."""

from __future__ import annotations

import json
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
from sqlalchemy import func
from sqlalchemy.engine import make_url
from sqlmodel import Session, col, create_engine, select

from db.models import Candidate, Chunk, Ranking, Request
from ops.bench import stack as local
from ops.bench.stack import Stack, stored_counts, wait_for_job, write_prompts
from orchestration.settings import Settings
from tests.conftest import fresh_database, manage_runner
from tests.integration.conftest import private_vhost
from tests.netns import TcpForwarder, can_make_namespaces, namespace_host

pytestmark = pytest.mark.integration

REMOTE_HOST = "blendq-remote-1"
REQUESTS = 12


def _register(host: Stack) -> None:
    models = [
        ("remote-gen", "generator", "transformers", "builtin:tiny-a", False,
         ["max_new_tokens=16", "temperature=0.0"]),
        ("local-gen", "generator", "transformers", "builtin:tiny-b", False,
         ["max_new_tokens=16", "temperature=0.0"]),
        ("remote-ranker", "ranker", "pairranker", "builtin:tiny-ranker", True, []),
        ("local-fuser", "fuser", "genfuser", "builtin:tiny-fuser", True,
         ["num_beams=2", "max_new_tokens=16"]),
    ]
    for name, role, backend, path, default, params in models:
        host.manage("models", "register", name, "--role", role, "--backend", backend,
                    "--path", path, *(["--default"] if default else []),
                    *(arg for p in params for arg in ("--param", p)))


def _through(url: str, forwarder: TcpForwarder) -> str:
    """``url`` with its host and port replaced by the forwarder's on the veth pair."""
    parsed = make_url(url).set(host=forwarder.address, port=forwarder.port)
    return parsed.render_as_string(hide_password=False)


def _target(url: str, default_port: int) -> tuple[str, int]:
    parsed = make_url(url)
    return parsed.host or "127.0.0.1", parsed.port or default_port


def test_generator_and_ranker_on_another_host_need_only_the_two_urls(
        settings: Settings, tmp_path: Path) -> None:
    why = can_make_namespaces()
    if why is not None:
        pytest.skip(why)
    logs = tmp_path / "logs"
    logs.mkdir()
    with ExitStack() as owned:
        database_url = owned.enter_context(fresh_database("_multihost"))
        broker_url = owned.enter_context(private_vhost())
        host = owned.enter_context(local.running_stack(
            settings, "multihost", logs, database_url=database_url, broker_url=broker_url,
            start=False))
        host.runner = manage_runner
        owned.callback(print, f"worker logs in {logs}")
        _register(host)
        assert "database" in host.manage("models", "list").stdout
        host.launch("dispatcher", "dispatcher", "--poll", "0.5", ready="dispatcher.started")
        host.launch("local-gen", "worker", "generate", "--model", "local-gen", ready=" ready.")
        host.launch("fuse", "worker", "fuse", ready=" ready.")

        ns = owned.enter_context(namespace_host(REMOTE_HOST))
        pg = owned.enter_context(TcpForwarder(ns.host_address, _target(database_url, 5432)))
        amqp = owned.enter_context(TcpForwarder(ns.host_address, _target(broker_url, 5672)))
        remote_cache = tmp_path / "remote-host-cache"
        remote_env = {**host.env, "BLENDQ_DATABASE_URL": _through(database_url, pg),
                      "BLENDQ_BROKER_URL": _through(broker_url, amqp),
                      "BLENDQ_MODEL_CACHE": str(remote_cache)}
        remote_env.pop("BLENDQ_REGISTRY_PATH", None)
        assert ns.host_address in remote_env["BLENDQ_DATABASE_URL"]
        remote = Stack(host.settings, remote_env, logs)
        owned.callback(remote.stop_all)  # before the namespace goes (unwound first)
        manage = [sys.executable, "manage.py"]
        remote.launch("remote-gen", ready=" ready.", command=ns.command(
            [*manage, "worker", "generate", "--model", "remote-gen"]))
        remote.launch("remote-rank", ready=" ready.",
                      command=ns.command([*manage, "worker", "rank"]))
        # The host's processes start while the namespace is made; all are ready here.
        host.wait_ready()
        remote.wait_ready()

        # Each side sees the other: the host's inspection reaches the remote workers.
        rows = json.loads(host.manage("workers", "list", "--json").stdout)
        assert sorted(row["host"] for row in rows).count(REMOTE_HOST) == 2, rows
        remote_rows = [r for r in rows if r["host"] == REMOTE_HOST]
        assert sorted(q for r in remote_rows for q in r["queues"]) == ["gen.remote-gen", "rank"]
        # They loaded the registered entries, with weights built in their own cache.
        assert sorted(m["path"] for r in remote_rows for m in r["models"]) == [
            "builtin:tiny-a", "builtin:tiny-ranker"], remote_rows
        assert {"tiny-a", "tiny-ranker"} <= {p.name for p in (remote_cache / "tiny").iterdir()}

        prompts = write_prompts(tmp_path / "in.jsonl", REQUESTS)
        job_id = host.manage("jobs", "submit", str(prompts), "--models",
                             "remote-gen,local-gen", "--chunk-size", "4").stdout.strip()
        job = wait_for_job(database_url, job_id, timeout=300)
        assert (job.status, job.total, job.completed, job.failed) == (
            "completed", REQUESTS, REQUESTS, 0), job.errors
        assert (job.ranker, job.fuser) == ("remote-ranker", "local-fuser")
        # Two candidates a request, compared in both orders.
        assert stored_counts(database_url, job_id) == {
            "candidate": 2 * REQUESTS, "comparison": 2 * REQUESTS, "ranking": REQUESTS,
            "fusion": REQUESTS}
        engine = create_engine(database_url)
        try:
            with Session(engine) as session:
                ids = select(Request.id).where(Request.job_id == job_id)
                per_model = dict(session.exec(
                    select(Candidate.model, func.count()).where(
                        col(Candidate.request_id).in_(ids)).group_by(Candidate.model)).all())
                rankers = set(session.exec(select(Ranking.ranker).where(
                    col(Ranking.request_id).in_(ids))).all())
                chunks = session.exec(select(Chunk.status).where(Chunk.job_id == job_id)).all()
        finally:
            engine.dispose()
        assert per_model == {"remote-gen": REQUESTS, "local-gen": REQUESTS}
        assert rankers == {"remote-ranker"}
        assert sorted(chunks) == ["done"] * (REQUESTS // 4)
        # gen.remote-gen and rank had no consumer but the remote workers, whose traffic
        # could only go through the veth pair.
        assert pg.connections > 0 and amqp.connections > 0
        netns, link = ns.netns, ns.host_link

    # Cleaned up: no namespace, no link, no test address left on this host.
    assert netns not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                       text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert f"{link}@" not in links and f"{link}:" not in links
    addresses = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True,
                               text=True).stdout
    assert ns.host_address not in addresses


def test_the_namespace_and_its_link_go_even_when_the_block_fails() -> None:
    why = can_make_namespaces()
    if why is not None:
        pytest.skip(why)
    with pytest.raises(RuntimeError, match="boom"), namespace_host("blendq-doomed") as ns:
        inside = subprocess.Popen(ns.command(["sleep", "300"]))
        hostname = subprocess.run(ns.command(["hostname"]), capture_output=True, text=True)
        assert hostname.stdout.strip() == "blendq-doomed"
        assert inside.pid in ns.pids()
        raise RuntimeError("boom")
    # The process left inside was killed, the namespace and both ends of the pair removed.
    assert inside.wait(timeout=10) != 0
    assert ns.netns not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                          text=True).stdout
    assert subprocess.run(["ip", "link", "show", ns.host_link],
                          capture_output=True).returncode != 0
    assert ns.host_address not in subprocess.run(["ip", "-o", "-4", "addr", "show"],
                                                 capture_output=True, text=True).stdout
