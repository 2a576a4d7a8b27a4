"""blendq operated like a Celery fleet: one stack with JSON logs and a metrics port per
process, the API with two server processes, and Flower, started as an admin would
(``celery -A orchestration.celery_app flower``, configured by BLENDQ_* only). One job
runs through it; then every process's /metrics, probes and log lines are read."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ops.bench.stack import Stack, running_stack, wait_for_job, write_prompts
from orchestration.settings import Settings
from tests.conftest import manage_runner
from tests.integration.api_server import ApiServer, free_port, running_api

pytestmark = pytest.mark.integration
MODELS = ("tiny-a", "tiny-b")
DASHBOARD = Path(__file__).resolve().parents[2] / "ops" / "grafana" / "blendq.json"
# Debian's prometheus package (apt-get install prometheus, or its binary extracted with
# apt-get download + dpkg -x); the development machine and CI do not install it.
PROMETHEUS = os.environ.get("BLENDQ_PROMETHEUS_BIN") or shutil.which("prometheus")


@dataclass
class Fleet:
    stack: Stack
    api: ApiServer
    flower_url: str
    job_id: str
    logs: Path
    ports: dict[str, int] = field(default_factory=dict)


@pytest.fixture(scope="module")
def fleet(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    logs = tmp_path_factory.mktemp("operating")
    env = {"BLENDQ_LOG_FORMAT": "json", "BLENDQ_METRICS_HOST": "127.0.0.1"}
    with running_stack(settings, "operating", logs, env=env, start=False) as stack:
        stack.runner = manage_runner
        ports: dict[str, int] = {}

        def launch(name: str, *args: str, ready: str) -> None:
            ports[name] = free_port()
            stack.launch(name, *args, ready=ready,
                         env={"BLENDQ_METRICS_PORT": str(ports[name])})

        launch("dispatcher", "dispatcher", "--poll", "0.5", ready="dispatcher.started")
        for model in MODELS:
            launch(f"gen-{model}", "worker", "generate", "--model", model, ready=" ready.")
        launch("rank", "worker", "rank", ready=" ready.")
        launch("fuse", "worker", "fuse", ready=" ready.")
        stack.wait_ready()
        flower_port = free_port()
        # Flower 2 serves its API only with authentication, or when told it may go without.
        stack.env["FLOWER_UNAUTHENTICATED_API"] = "true"
        stack.start("flower", ready="Visit me at", command=[
            sys.executable, "-m", "celery", "-A", "orchestration.celery_app", "flower",
            f"--port={flower_port}", "--address=127.0.0.1"])
        with running_api(stack, logs, args=("--workers", "2")) as api:
            prompts = write_prompts(logs / "prompts.jsonl", 6)
            job_id = stack.manage("jobs", "submit", str(prompts), "--models",
                                  ",".join(MODELS)).stdout.strip()
            job = wait_for_job(stack.settings.database_url, job_id, timeout=300)
            assert job.status == "completed", (job.status, job.errors)
            yield Fleet(stack, api, f"http://127.0.0.1:{flower_port}", job_id, logs, ports)


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, response.text
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(response.text)
            for sample in family.samples}


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and set(labels.items()) <= set(ls))


def test_workers_count_their_stage_tasks_and_requests(fleet: Fleet) -> None:
    for model in MODELS:
        samples = scrape(f"http://127.0.0.1:{fleet.ports[f'gen-{model}']}/metrics")
        assert value(samples, "blendq_tasks_total", stage="generate", model=model,
                     outcome="succeeded") >= 1
        assert value(samples, "blendq_stage_requests_total", stage="generate", model=model,
                     outcome="completed") >= 1
        assert value(samples, "blendq_task_duration_seconds_count", stage="generate",
                     model=model) >= 1
        # A generator worker runs no other stage, and labels never carry ids.
        assert value(samples, "blendq_tasks_total", stage="rank") == 0
        assert not any(fleet.job_id in str(ls) for _, ls in samples)
    for stage in ("rank", "fuse"):
        samples = scrape(f"http://127.0.0.1:{fleet.ports[stage]}/metrics")
        assert value(samples, "blendq_tasks_total", stage=stage, outcome="succeeded") >= 1
        assert value(samples, "blendq_stage_requests_total", stage=stage,
                     outcome="completed") >= 1


def test_dispatcher_counts_publishes_and_reads_the_fleet(fleet: Fleet) -> None:
    samples = scrape(f"http://127.0.0.1:{fleet.ports['dispatcher']}/metrics")
    for model in MODELS:
        assert value(samples, "blendq_tasks_published_total", stage="generate",
                     model=model) >= 1
        assert value(samples, "blendq_generated_tokens_total", model=model) > 0
        assert value(samples, "blendq_candidates_total", model=model, outcome="ok") == 6
        assert value(samples, "blendq_queue_consumers", queue=f"gen.{model}") == 1
    assert value(samples, "blendq_comparisons_total") > 0
    assert value(samples, "blendq_jobs", state="completed") == 1
    assert value(samples, "blendq_outbox_pending") == 0
    assert value(samples, "blendq_database_up") == 1
    assert value(samples, "blendq_broker_up") == 1
    assert value(samples, "blendq_queue_consumers", queue="rank") == 1


def test_api_metrics_sum_its_processes(fleet: Fleet) -> None:
    before = value(scrape(f"{fleet.api.base_url}/metrics"), "blendq_api_requests_total",
                   route="/healthz")
    for _ in range(8):  # a connection each, so both server processes answer some
        assert httpx.get(f"{fleet.api.base_url}/healthz", timeout=30).status_code == 200
    samples = scrape(f"{fleet.api.base_url}/metrics")
    assert value(samples, "blendq_api_requests_total", route="/healthz", status="2xx") \
        == before + 8
    assert value(samples, "blendq_jobs", state="completed") == 1
    assert value(samples, "blendq_generated_tokens_total") > 0


def test_probes(fleet: Fleet) -> None:
    ready = httpx.get(f"{fleet.api.base_url}/readyz", timeout=30)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"postgresql": "ok", "rabbitmq": "ok"}
    for name, port in fleet.ports.items():
        for probe in ("healthz", "readyz"):
            response = httpx.get(f"http://127.0.0.1:{port}/{probe}", timeout=30)
            assert response.status_code == 200, (name, probe, response.text)
    # Celery's own probe, configured by BLENDQ_* alone.
    ping = subprocess.run([sys.executable, "-m", "celery", "-A", "orchestration.celery_app",
                           "inspect", "ping", "--timeout", "5"], env=fleet.stack.env,
                          capture_output=True, text=True, timeout=120)
    assert ping.returncode == 0, ping.stderr
    assert ping.stdout.count("pong") == len(MODELS) + 2


def _lines(path: Path) -> list[str]:
    return [line for line in path.read_text(errors="replace").splitlines() if line.strip()]


def test_every_log_line_is_one_json_object(fleet: Fleet) -> None:
    events: dict[str, list[dict[str, object]]] = {}
    for name in ("dispatcher", *(f"gen-{m}" for m in MODELS), "rank", "fuse", "api-"):
        [log] = [p for p in fleet.logs.glob(f"{name}*.log")]
        for number, line in enumerate(_lines(log), 1):
            try:
                event = json.loads(line)
            except ValueError:
                pytest.fail(f"{log.name}:{number} is not JSON: {line!r}")
            assert isinstance(event, dict), f"{log.name}:{number}: {line!r}"
            events.setdefault(name, []).append(event)
    worker = events["gen-tiny-a"]
    # Celery's own records, rendered by the same formatter, and the job's ids bound.
    assert any(str(e.get("logger", "")).startswith("celery") for e in worker)
    assert any(e.get("job_id") == fleet.job_id and e.get("chunk_id") for e in worker)
    api = events["api-"]
    assert any(str(e.get("logger", "")).startswith("uvicorn") for e in api)
    assert any(e.get("http_request_id") for e in api)


def test_flower_sees_the_workers_their_queues_and_the_jobs_tasks(fleet: Fleet) -> None:
    with httpx.Client(base_url=fleet.flower_url, timeout=60) as flower:
        workers = flower.get("/api/workers", params={"refresh": "true"}).json()
        queues = {name: {q["name"] for q in info.get("active_queues") or []}
                  for name, info in workers.items()}
        for model in MODELS:
            assert any(f"gen.{model}" in q for q in queues.values()), queues
        assert any("rank" in q for q in queues.values()), queues
        deadline = time.monotonic() + 30
        while True:
            tasks = flower.get("/api/tasks").json()
            ours = [t for t in tasks.values() if fleet.job_id in str(t.get("kwargs"))]
            names = {t["name"] for t in ours if t.get("state") == "SUCCESS"}
            if {"blendq.generate", "blendq.rank", "blendq.fuse"} <= names:
                break
            assert time.monotonic() < deadline, (names, len(tasks))
            time.sleep(1)
        generated = {t["kwargs"] for t in ours if t["name"] == "blendq.generate"}
        for model in MODELS:
            assert any(model in kwargs for kwargs in generated), generated


@pytest.mark.skipif(PROMETHEUS is None, reason="no prometheus binary (BLENDQ_PROMETHEUS_BIN)")
def test_prometheus_scrapes_every_process_and_the_dashboard_queries_evaluate(
        fleet: Fleet, tmp_path: Path) -> None:
    import yaml

    assert PROMETHEUS is not None
    api = fleet.api.base_url.removeprefix("http://")
    workers = [f"127.0.0.1:{port}" for port in fleet.ports.values()]
    config = tmp_path / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "blendq-workers",
                            "static_configs": [{"targets": workers}]},
                           {"job_name": "blendq-api", "static_configs": [{"targets": [api]}]}],
    }))
    port = free_port()
    with (tmp_path / "prometheus.log").open("ab") as log:
        server = subprocess.Popen([PROMETHEUS, f"--config.file={config}",
                                   f"--storage.tsdb.path={tmp_path / 'data'}",
                                   f"--web.listen-address=127.0.0.1:{port}"],
                                  stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                active = httpx.get(f"{base}/targets", timeout=10).json()["data"]["activeTargets"]
                health = {t["scrapeUrl"]: t["health"] for t in active}
            except (httpx.TransportError, ValueError, KeyError):
                health = {}
            if len(health) == len(workers) + 1 and set(health.values()) == {"up"}:
                break
            assert time.monotonic() < deadline, health
            time.sleep(1)
        time.sleep(5)  # a few samples of each, for rate()
        dashboard = json.loads(DASHBOARD.read_text())
        results = {}
        for panel in dashboard["panels"]:
            for target in panel["targets"]:
                expr = target["expr"].replace("$__rate_interval", "1m")
                answer = httpx.get(f"{base}/query", params={"query": expr}, timeout=30).json()
                assert answer["status"] == "success", (panel["title"], expr, answer)
                results[expr] = answer["data"]["result"]
        tokens = {r["metric"]["model"] for r in results[
            "max by (model) (rate(blendq_generated_tokens_total[1m]))"]}
        assert set(MODELS) <= tokens
        states = {r["metric"]["state"]: float(r["value"][1]) for r in results[
            "max by (state) (blendq_jobs)"]}
        assert states["completed"] == 1
    finally:
        server.terminate()
        server.wait(timeout=30)
