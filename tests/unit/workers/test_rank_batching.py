"""The ranking stage packs comparisons under the ranker entry's token budget and stores
them with COPY; the stored logits do not depend on the budget (real tiny PairRanker,
real database)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from celery import Celery
from sqlmodel import col, select

from db.engine import session_scope
from db.models import Candidate, Chunk, Comparison, Request
from orchestration.registry import get_registry
from orchestration.settings import Settings
from orchestration.submission import JobOptions, submit
from workers.generation.tasks import generate_chunk
from workers.ranking.tasks import rank_chunk

REGISTRY = """
[[models]]
name = "tiny-a"
role = "generator"
backend = "transformers"
path = "builtin:tiny-a"
params = { max_new_tokens = 12 }

[[models]]
name = "tiny-b"
role = "generator"
backend = "transformers"
path = "builtin:tiny-b"
params = { max_new_tokens = 4 }

[[models]]
name = "tiny-c"
role = "generator"
backend = "transformers"
path = "builtin:tiny-c"
params = { max_new_tokens = 8 }

[[models]]
name = "roomy"
role = "ranker"
backend = "pairranker"
path = "builtin:tiny-ranker"
default = true

[[models]]
name = "one-at-a-time"
role = "ranker"
backend = "pairranker"
path = "builtin:tiny-ranker"
params = { token_budget = 1, batch_cost = 0 }
"""


@pytest.fixture
def registry_settings(settings: Settings, tmp_path: Path, celery_app: Celery) -> Settings:
    path = tmp_path / "registry.toml"
    path.write_text(REGISTRY)
    return settings.model_copy(update={"registry_path": path})


def _ranked_job(settings: Settings, celery_app: Celery,
                ranker: str) -> dict[tuple[str, str, str], float]:
    models = ["tiny-a", "tiny-b", "tiny-c"]
    lines = [json.dumps({"custom_id": f"q{i}", "instruction": "Explain tea. " * (i + 1)})
             .encode() for i in range(4)]
    with session_scope(settings.database_url) as session:
        job_id = submit(session, celery_app, lines,
                        JobOptions(models=models, ranker=ranker, top_k=2, chunk_size=4),
                        get_registry(settings.registry_path)).job.id
    with session_scope(settings.database_url) as session:
        chunk_id = session.exec(select(Chunk.id).where(Chunk.job_id == job_id)).one()
    assert chunk_id is not None
    for model in models:
        generate_chunk(settings, job_id, chunk_id, model)
    assert rank_chunk(settings, job_id, chunk_id) == {"ranked": 4, "comparisons": 24, "chunks": 1}
    with session_scope(settings.database_url) as session:
        models_of = {c.id: c.model for c in session.exec(
            select(Candidate).join(Request, col(Request.id) == Candidate.request_id)
            .where(Request.job_id == job_id)).all()}
        rows = session.exec(select(Request.custom_id, Comparison).join(
            Comparison, Comparison.request_id == Request.id).where(
            Request.job_id == job_id)).all()
    return {(cid, models_of[c.candidate_a_id], models_of[c.candidate_b_id]): c.logit
            for cid, c in rows}


def test_stored_logits_do_not_depend_on_the_token_budget(registry_settings: Settings,
                                                         celery_app: Celery) -> None:
    roomy = _ranked_job(registry_settings, celery_app, "roomy")
    single = _ranked_job(registry_settings, celery_app, "one-at-a-time")
    assert len(roomy) == 24 and roomy.keys() == single.keys()
    assert max(abs(roomy[k] - single[k]) for k in roomy) < 1e-5
    assert len(set(roomy.values())) > 1  # real, varied logits, not a constant
