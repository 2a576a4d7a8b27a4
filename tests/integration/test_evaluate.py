"""``jobs evaluate`` on a real job run by real workers (tiny models): every metric for
every system, the oracle never below any of them, ranks from an auditor's label, the PNG
chart, and the table kept on the job and shown on its auditor page (in Chromium)."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, create_engine, select

from db.models import Candidate, Job, Request
from tests.integration.api_server import running_api
from tests.integration.conftest import Stack
from tests.integration.test_pipeline import wait_for, write_prompts

pytestmark = pytest.mark.integration


@dataclass
class Evaluated:
    job_id: str
    folder: Path
    references: Path
    report: dict[str, Any]
    chart: Path


@pytest.fixture(scope="module")
def evaluated(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Evaluated:
    folder = tmp_path_factory.mktemp("evaluate")
    prompts = write_prompts(folder / "in.jsonl", 4)
    job_id = stack.manage("jobs", "submit", str(prompts), "--chunk-size", "4").stdout.strip()
    assert wait_for(stack.settings.database_url, job_id).status == "completed"
    engine = create_engine(stack.settings.database_url)
    with Session(engine) as s:
        texts = {(r.custom_id, c.model): c.text for r, c in s.exec(
            select(Request, Candidate).where(Request.job_id == job_id,
                                             Candidate.request_id == Request.id)).all()}
    engine.dispose()
    # tiny-a's answers are the references of three requests; the fourth has none.
    refs = folder / "refs.jsonl"
    refs.write_text("".join(json.dumps({"custom_id": f"req-{i:03d}",
                                        "reference": texts[(f"req-{i:03d}", "tiny-a")]
                                        or "a colour"}) + "\n" for i in range(3))
                    + json.dumps({"id": "not-in-job", "output": "x"}) + "\n")
    stack.manage("audit", "label", "--job", job_id, "--custom-id", "req-001", "--ranking",
                 "tiny-c,tiny-a,tiny-b", "--author", "ana")
    chart = folder / "eval.png"
    out = stack.manage("jobs", "evaluate", job_id, "--references", str(refs), "--json",
                       "--chart", str(chart), "--samples", "200", timeout=300)
    return Evaluated(job_id, folder, refs, json.loads(out.stdout), chart)


def test_every_metric_for_every_system(stack: Stack, evaluated: Evaluated) -> None:
    report = evaluated.report
    assert report["evaluated"] == 3 and report["without_reference"] == 1
    assert report["references_unmatched"] == 1 and report["labelled_requests"] == 1
    rows = {r["system"]: r for r in report["systems"]}
    assert set(rows) == {"tiny-a", "tiny-b", "tiny-c", "ranker", "fused", "oracle"}
    for metric in ("bleu", "chrf", "rougeL", "bertscore"):
        for row in rows.values():
            assert row["scores"][metric] is not None
            assert rows["oracle"]["scores"][metric] >= row["scores"][metric] - 1e-9
        assert rows["tiny-a"]["scores"][metric] == pytest.approx(100.0, abs=0.01)
        assert report["best_generator"][metric] == "tiny-a"
        diff = rows["tiny-b"]["vs_best_generator"][metric]
        assert diff["low"] <= diff["delta"] <= diff["high"]
    assert rows["tiny-c"]["scores"]["avg_rank"] == 1.0
    assert rows["tiny-b"]["scores"]["avg_rank"] == 3.0
    assert rows["oracle"]["scores"]["avg_rank"] == 1.0
    chart = evaluated.chart
    assert chart.read_bytes().startswith(b"\x89PNG") and chart.stat().st_size > 5000

    engine = create_engine(stack.settings.database_url)
    with Session(engine) as s:
        job = s.get(Job, evaluated.job_id)
        assert job is not None and job.meta is not None
        kept = job.meta["evaluation"]
    engine.dispose()
    assert kept["header"][:2] == ["system", "bleu"] and len(kept["rows"]) == 6
    assert kept["references"] == "refs.jsonl"

    table = stack.manage("jobs", "evaluate", evaluated.job_id, "--references",
                         str(evaluated.references), "--metrics", "bleu,chrf",
                         "--no-store").stdout
    assert "oracle" in table and "(best)" in table and "bertscore" not in table
    bad = evaluated.folder / "bad.jsonl"
    bad.write_text('{"custom_id": "req-000", "reference": "x"}\n{"custom_id": "req-001"}\n')
    failed = stack.manage("jobs", "evaluate", evaluated.job_id, "--references", str(bad),
                          check=False)
    assert failed.returncode == 1 and "line 2: no 'reference'" in failed.stderr


def test_the_auditor_page_shows_the_table(stack: Stack, evaluated: Evaluated) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Chromium is not installed: run ops/scripts/browser.sh"
    job_id = evaluated.job_id
    with running_api(stack, evaluated.folder) as api, sync_playwright() as playwright:
        key = api.key("default", "auditor")
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page()
            page.goto(f"{api.base_url}/audit/jobs/{job_id}")
            page.fill("#key", key)
            page.click("form[action='/audit/login'] button[type=submit]")
            page.wait_for_url(f"{api.base_url}/audit/jobs/{job_id}")
            header = page.locator("#evaluation thead th").all_inner_texts()
            assert header == ["system", "bleu", "chrf", "rougeL", "bertscore", "avg_rank"]
            rows = page.locator("#evaluation tbody tr")
            assert rows.count() == 6
            systems = [rows.nth(i).locator("td").first.inner_text() for i in range(6)]
            assert systems == ["tiny-a", "tiny-b", "tiny-c", "ranker", "fused", "oracle"]
            assert "(best)" in rows.nth(0).inner_text()
            assert "3 of 4 requests have a reference" in page.content()
        finally:
            browser.close()
