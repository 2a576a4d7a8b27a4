"""The benchmark scripts at smoke size: they run end to end and print their figures."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ADMIN_URL, BROKER_URL, MODEL_CACHE
from tests.integration.conftest import REPO

pytestmark = pytest.mark.integration


def _run(*args: str, timeout: float) -> str:
    env = {**os.environ, "BLENDQ_BENCH_ADMIN_URL": ADMIN_URL,
           "BLENDQ_BENCH_BROKER_URL": BROKER_URL, "BLENDQ_MODEL_CACHE": str(MODEL_CACHE)}
    env.pop("BLENDQ_REGISTRY_PATH", None)
    result = subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr[-3000:]}"
    return result.stdout


def test_load_runs_a_small_job_and_verifies_it() -> None:
    # Two chunks of 8: the smallest job that still spreads over chunks.
    out = _run("ops.bench.load", "--requests", "16", "--timeout", "180", timeout=400)
    assert "candidate 48, comparison 96, ranking 16, fusion 16 (verified)" in out
    assert "requests/s" in out
    for process in ("dispatcher", "gen-tiny-a", "gen-tiny-b", "gen-tiny-c", "rank", "fuse"):
        assert f"\n{process} " in out


def test_storage_prints_its_ratio() -> None:
    out = _run("ops.bench.storage", "--requests", "100", "--rounds", "1", timeout=180)
    # The benchmark asserts each way's counts itself (every row once, none on a second
    # delivery); here: it got to its table, with a ratio for both kinds of rows.
    assert "comparison copy, as the ranking worker writes / orm:" in out
    assert "candidate insert_ignore, as the generation worker writes / orm:" in out
    assert "COPY to temporary table (before issue 13)" in out


def test_pipeline_prints_the_bare_and_full_rates() -> None:
    out = _run("ops.bench.pipeline", "--requests", "16", "--timeout", "300", timeout=400)
    assert "bare canvas, no-op tasks" in out and "full, tiny models" in out
    assert "bare / full:" in out


def test_fleet_runs_a_small_job_through_null_models() -> None:
    # One replica a queue and no bare baseline (the pipeline test above runs run_bare):
    # the smallest fleet that still spreads over chunks and gathers.
    out = _run("ops.bench.fleet", "--requests", "256", "--chunk-size", "32", "--replicas", "1",
               "--bare-requests", "0", "--timeout", "300", timeout=400)
    assert ("rows {'candidate': 768, 'comparison': 1536, 'ranking': 256, 'fusion': 256}"
            in out)
    assert "requests/s" in out and "last / first:" in out
    assert "PostgreSQL transactions per request:" in out


def test_observability_prints_both_workers_rates() -> None:
    out = _run("ops.bench.observability", "--tasks", "20", "--rounds", "1", "--timeout", "120",
               timeout=300)
    assert "round 1, plain: 20 tasks" in out and "round 1, observed: 20 tasks" in out
    assert "observed / plain throughput:" in out
