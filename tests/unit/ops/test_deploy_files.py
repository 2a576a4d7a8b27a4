"""The deployment files agree with each other and with the code: every blendq service has a
readiness probe on the port it serves, Prometheus scrapes each of them, generators get a
GPU each, and every metric the Grafana dashboard plots is one blendq exports."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import REGISTRY

from ops.metrics import FleetCollector
from orchestration.settings import Settings

DEPLOY = Path(__file__).resolve().parents[3] / "ops" / "deploy"
DASHBOARD = DEPLOY.parent / "grafana" / "blendq.json"
SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum"),
            "gauge": ("",), "summary": ("_count", "_sum"), "info": ("_info",)}


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    return loaded["services"]


def _blendq_services() -> dict[str, Any]:
    return {name: s for name, s in _compose().items()
            if str(s.get("image", "")).startswith("${BLENDQ_IMAGE")}


def test_every_blendq_service_probes_the_port_it_serves() -> None:
    services = _blendq_services()
    assert {"migrate", "dispatcher", "api", "rank", "fuse"} <= set(services)
    for name, service in services.items():
        if name == "migrate":
            assert service["restart"] == "no" and service["command"] == ["db", "upgrade"]
            continue
        probe = service["healthcheck"]["test"]
        assert probe[:4] == ["CMD", "python", "-m", "ops.probe"], name
        port = "8000" if name == "api" else service["environment"]["BLENDQ_METRICS_PORT"]
        assert probe[4] == f"http://127.0.0.1:{port}/readyz", name
        assert service["depends_on"]["migrate"]["condition"] == \
            "service_completed_successfully", name


def test_prometheus_scrapes_every_blendq_process() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    targets = {t for job in config["scrape_configs"] for group in job["static_configs"]
               for t in group["targets"]}
    expected = {f"{name}:{'8000' if name == 'api' else '9100'}"
                for name in _blendq_services() if name != "migrate"}
    assert targets == expected


def test_each_generator_model_has_a_service_with_a_gpu() -> None:
    generators = {n: s for n, s in _blendq_services().items() if "generate" in s["command"]}
    assert len(generators) >= 2
    for name, service in [*generators.items(), *((n, _compose()[n]) for n in ("rank", "fuse"))]:
        [device] = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["capabilities"] == ["gpu"] and device["count"] == 1, name
    models = [s["command"][s["command"].index("--model") + 1] for s in generators.values()]
    assert len(set(models)) == len(models)


def _exported(settings: Settings) -> set[str]:
    import ops.api.observability  # noqa: F401  (registers the API's metrics)
    import workers.metrics  # noqa: F401

    families = [*REGISTRY.collect(), *FleetCollector(settings).collect()]
    return {f.name + suffix for f in families for suffix in SUFFIXES.get(f.type, ("",))}


def test_the_dashboard_plots_only_exported_metrics(settings: Settings) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {m for e in exprs for m in re.findall(r"\bblendq_[a-z_]+", e)}
    exported = _exported(settings)
    assert "blendq_queue_messages" in exported  # the fleet collector reached both servers
    assert used - exported == set()
    # Every metric family blendq defines is on the dashboard.
    assert {"blendq_tasks_total", "blendq_generated_tokens_total", "blendq_comparisons_total",
            "blendq_batch_tokens_total", "blendq_outbox_oldest_pending_age_seconds",
            "blendq_chunk_oldest_running_age_seconds", "blendq_jobs",
            "blendq_queue_consumers", "blendq_api_requests_total"} <= used
