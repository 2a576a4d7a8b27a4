"""The auditor pages: in the system's Chromium (driven by Playwright) an auditor signs in,
opens the jobs, a job and a request, reads the heat map and records a label that
``audit export`` then contains, all under the pages' Content-Security-Policy; with plain
HTTP, the pages refuse what they must (no key, a submitter key, another tenant's ids, a
post from another site), and the sign-in is a server-side session that the API refuses,
that sign-out and revoking the key end."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlmodel import col, func, select

from db.api_keys import Created, create_key, revoke_key
from db.engine import session_scope
from db.models import Label, Request
from db.queries_audit import request_detail
from ops.api.deps import SESSION_COOKIE
from ops.api.headers import PAGES_POLICY
from ops.api.public_ids import request_ids
from tests.integration.api_server import ApiServer, running_api
from tests.integration.conftest import Stack
from tests.integration.test_pipeline import wait_for, write_prompts

pytestmark = pytest.mark.integration

TENANT, OTHER = "acme", "globex"
# Model output and prompts are untrusted: this must come out as text, never run.
MARKUP = "<script>window.pwned = 1</script><b>Is this bold?</b> & name a colour."
SCREENSHOT_COPY = Path("/tmp/blendq-audit-page.png")


@dataclass
class Audited:
    stack: Stack
    api: ApiServer
    job_id: str
    requests: dict[str, int]  # custom_id -> request id (the row's)
    other_job: str
    other_request: int
    keys: dict[str, Created]  # auditor, submitter

    def public(self, request_id: int) -> str:
        """The id the pages show and take."""
        return request_ids(self.stack.settings.database_url).encode(request_id)


@pytest.fixture(scope="module")
def audited(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Audited]:
    folder = tmp_path_factory.mktemp("pages")
    prompts = write_prompts(folder / "ours.jsonl", 3)
    lines = [json.loads(line) for line in prompts.read_text().splitlines()]
    lines[0]["instruction"] = MARKUP
    prompts.write_text("".join(json.dumps(line) + "\n" for line in lines))
    ours = stack.manage("jobs", "submit", str(prompts), "--chunk-size", "3",
                        "--tenant", TENANT).stdout.strip()
    theirs = stack.manage("jobs", "submit", str(write_prompts(folder / "theirs.jsonl", 1)),
                          "--tenant", OTHER).stdout.strip()
    url = stack.settings.database_url
    # Keys straight into the database: the CLI path is tested with the API itself.
    with session_scope(url) as session:
        keys = {"auditor": create_key(session, TENANT, "auditor", "ana"),
                "submitter": create_key(session, TENANT, "submitter", "feeder")}
    with running_api(stack, folder) as api:
        for job in (ours, theirs):
            assert wait_for(url, job).status == "completed"
        with session_scope(url) as session:
            requests = {r.custom_id: r.id or 0 for r in session.exec(
                select(Request).where(Request.job_id == ours)).all()}
            other = session.exec(select(Request.id).where(Request.job_id == theirs)).one()
        yield Audited(stack, api, ours, requests, theirs, other or 0, keys)


def _labels(url: str, request_id: int) -> int:
    with session_scope(url) as session:
        return int(session.exec(select(func.count()).select_from(Label)
                                .where(col(Label.request_id) == request_id)).one())


def test_an_auditor_reviews_a_request_and_labels_it_in_the_browser(
        audited: Audited, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "Chromium is not installed: run ops/scripts/browser.sh"
    base, job_id = audited.api.base_url, audited.job_id
    row_id = audited.requests["req-000"]
    request_id = audited.public(row_id)
    with session_scope(audited.stack.settings.database_url) as session:
        request = session.get(Request, row_id)
        assert request is not None
        detail = request_detail(session, request)
    by_rank = sorted(detail["candidates"], key=lambda c: c["rank"])
    better, worse = by_rank[-1], by_rank[0]  # the auditor disagrees with the ranker
    note = "the last one is right <i>honestly</i>"
    author = f"ana (key {audited.keys['auditor'].key_id})"
    shot = tmp_path / "request.png"

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            # Anything the policy blocks shows in the console: nothing may be.
            console: list[str] = []
            page.on("console", lambda message: console.append(message.text))
            # A deep link without a key goes to sign in, and back once signed in.
            page.goto(f"{base}/audit/jobs/{job_id}")
            assert "/audit/login" in page.url
            page.fill("#key", audited.keys["auditor"].secret)
            page.click("form[action='/audit/login'] button[type=submit]")
            page.wait_for_url(f"{base}/audit/jobs/{job_id}")
            cookie = next(c for c in context.cookies() if c["name"] == SESSION_COOKIE)
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert cookie["path"] == "/" and not cookie["secure"]  # plain http here
            # A session token, not the key.
            secret = audited.keys["auditor"].secret
            assert cookie["value"] and cookie["value"] not in secret
            assert secret.split("_", 2)[2] not in cookie["value"]

            page.click("a.brand")
            jobs = page.locator("#jobs tbody tr")
            assert jobs.count() == 1 and job_id in jobs.first.inner_text()
            assert "completed" in jobs.first.inner_text()

            page.click(f"#jobs a[href='/audit/jobs/{job_id}']")
            rows = page.locator("#requests tbody tr")
            assert rows.count() == 3
            winners = page.locator("#requests td.winner").all_inner_texts()
            assert all(re.match(r"tiny-[abc] over tiny-[abc]", w) for w in winners), winners
            margins = [float(m) for m in page.locator("#requests td.margin").all_inner_texts()]
            assert all(m >= 0 for m in margins)

            page.click(f"#requests a[href='/audit/requests/{request_id}'] >> nth=0")
            page.wait_for_url(f"{base}/audit/requests/{request_id}")
            # The prompt is shown as the text it is; its script never ran.
            assert page.locator("#prompt pre.text").first.text_content() == MARKUP
            assert page.evaluate("typeof window.pwned") == "undefined"
            assert page.locator("#prompt b").count() == 0

            cards = page.locator("#candidates .card")
            assert cards.count() == 3
            for i, candidate in enumerate(by_rank):
                card = cards.nth(i)
                assert card.locator(".model").inner_text() == candidate["model"]
                assert card.locator(".rank").inner_text() == f"#{candidate['rank']}"
                shown = card.locator("pre.text").text_content() or ""
                assert shown == candidate["text"].replace("\r\n", "\n").replace("\r", "\n")

            # The heat map: 3 x 3 cells, the six comparisons coloured, the diagonal not.
            assert page.locator("table.heatmap td.cell").count() == 9
            assert page.locator("table.heatmap td.self").count() == 3
            cells = page.locator("table.heatmap td.logit")
            assert cells.count() == 6
            shown_logits = [float(v or "nan") for v in cells.evaluate_all(
                "cells => cells.map(c => c.dataset.logit)")]
            stored = [v for row in detail["matrix"]["logits"] for v in row if v is not None]
            assert shown_logits == pytest.approx(stored)
            colours = cells.evaluate_all(
                "cells => cells.map(c => getComputedStyle(c).backgroundColor)")
            strongest = max(range(6), key=lambda k: abs(stored[k]))
            assert colours[strongest] not in ("rgb(255, 255, 255)", "rgba(0, 0, 0, 0)")
            assert page.locator(".legend .swatch").count() == 7

            fused = page.locator("#fusion pre.fused-output").text_content() or ""
            assert fused == (detail["fused_output"] or "").replace("\r", "\n")
            assert page.locator("#fusion .chip").count() == len(detail["fusion"]["inputs"])

            # Record a label through the form; the page comes back showing it.
            page.select_option("select[name=first]", str(better["candidate_id"]))
            page.select_option("select[name=second]", str(worse["candidate_id"]))
            page.check("input[name=verdict][value=first]")
            page.fill("#note", note)
            page.click("#label-form button[type=submit]")
            page.wait_for_url(re.compile(rf"/audit/requests/{request_id}\?recorded=\d+"))
            recorded = page.locator("#labels tr.recorded")
            assert recorded.count() == 1
            text = recorded.inner_text()
            assert author in text and note in text
            assert f"{better['model']} #{better['candidate_id']} better than" in text

            page.screenshot(path=str(shot), full_page=True)
            blocked = [m for m in console if "Content Security Policy" in m]
            assert not blocked, blocked
        finally:
            browser.close()

    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n") and shot.stat().st_size > 10_000
    shutil.copyfile(shot, SCREENSHOT_COPY)

    out = tmp_path / "pairs.jsonl"
    audited.stack.manage("audit", "export", "--job", job_id, "--format", "pairs", "-o", str(out))
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    mine = [p for p in pairs if p["origin"] == "label" and p["note"] == note]
    assert len(mine) == 1
    assert mine[0]["author"] == author and mine[0]["label"] == 1.0
    assert (mine[0]["candidate_a_id"], mine[0]["candidate_b_id"]) == (
        better["candidate_id"], worse["candidate_id"])


def test_the_pages_refuse_strangers_submitters_other_tenants_and_other_sites(
        audited: Audited) -> None:
    base, job_id = audited.api.base_url, audited.job_id
    row_id = audited.requests["req-001"]
    request_id = audited.public(row_id)
    other_request = audited.public(audited.other_request)
    own = ["/audit/", f"/audit/jobs/{job_id}", f"/audit/jobs/{job_id}/queue",
           f"/audit/requests/{request_id}"]
    theirs = [f"/audit/jobs/{audited.other_job}", f"/audit/jobs/{audited.other_job}/queue",
              f"/audit/requests/{other_request}"]

    with httpx.Client(base_url=base, timeout=30) as stranger:
        for path in own:
            answer = stranger.get(path)
            assert answer.status_code == 303, path
            assert answer.headers["location"].startswith("/audit/login?next=%2Faudit%2F")
        assert stranger.get("/audit/login").status_code == 200
        assert stranger.get("/audit/static/audit.css").headers["content-type"].startswith(
            "text/css")
        # A submitter key signs in nowhere here, by form or by header.
        refused = stranger.post("/audit/login", data={"key": audited.keys["submitter"].secret})
        assert refused.status_code == 403 and "set-cookie" not in refused.headers

    revoked = {SESSION_COOKIE: "x" * 43}
    with httpx.Client(base_url=base, cookies=revoked, timeout=30) as stale:
        answer = stale.get(own[1])
        assert answer.status_code == 303 and f'{SESSION_COOKIE}=""' in answer.headers["set-cookie"]

    with audited.api.client(audited.keys["submitter"].secret) as submitter:
        for path in own:
            answer = submitter.get(path)
            assert answer.status_code == 403, path
            assert "submitter key" in answer.text
        assert submitter.post(f"/audit/requests/{request_id}/labels",
                              data={"first": "1", "second": "2", "verdict": "tie"}
                              ).status_code == 403

    with audited.api.client(audited.keys["auditor"].secret) as auditor:
        assert audited.other_job not in auditor.get("/audit/").text
        for path in theirs:
            assert auditor.get(path).status_code == 404, path
        # A row id is no page: requests are named by their opaque id only.
        assert auditor.get(f"/audit/requests/{row_id}").status_code == 404
        assert auditor.post(f"/audit/requests/{other_request}/labels",
                            data={"first": "1", "second": "2", "verdict": "tie"}
                            ).status_code == 404
        queue = auditor.get(own[2])
        assert queue.status_code == 200 and queue.text.count("/audit/requests/") == 3

    # Signing in by form sets the cookie; a post that carries it must come from this site.
    with httpx.Client(base_url=base, timeout=30) as browser_like:
        signed_in = browser_like.post("/audit/login", headers={"Origin": base},
                                      data={"key": audited.keys["auditor"].secret,
                                            "next": f"/audit/requests/{request_id}"})
        assert signed_in.status_code == 303
        assert signed_in.headers["location"] == f"/audit/requests/{request_id}"
        cookie = signed_in.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
        page = browser_like.get(f"/audit/requests/{request_id}")
        assert page.status_code == 200 and "Record a label" in page.text
        ids = re.findall(r'<option value="(\d+)"', page.text)[:2]
        form = {"first": ids[0], "second": ids[1], "verdict": "tie", "note": "forged"}
        before = _labels(audited.stack.settings.database_url, row_id)
        for headers in ({"Origin": "http://evil.example"},
                        {"Referer": "http://evil.example/page"}, {}):
            forged = browser_like.post(f"/audit/requests/{request_id}/labels", data=form,
                                       headers=headers)
            assert forged.status_code == 403, headers
        assert _labels(audited.stack.settings.database_url, row_id) == before
        # The same form from our own page goes through, and bad input is explained.
        bad = browser_like.post(f"/audit/requests/{request_id}/labels", headers={
            "Origin": base}, data={**form, "second": ids[0]})
        assert bad.status_code == 400 and "named twice" in bad.text
        sent = browser_like.post(f"/audit/requests/{request_id}/labels", data=form,
                                 headers={"Referer": f"{base}/audit/requests/{request_id}"})
        assert sent.status_code == 303
        assert _labels(audited.stack.settings.database_url, row_id) == before + 1
        token = browser_like.cookies[SESSION_COOKIE]
        out = browser_like.post("/audit/logout", headers={"Origin": base})
        assert out.status_code == 303 and f'{SESSION_COOKIE}=""' in out.headers["set-cookie"]
    # Signed out means ended on the server: the old token, sent again, signs in nothing.
    with httpx.Client(base_url=base, cookies={SESSION_COOKIE: token}, timeout=30) as replay:
        assert replay.get(own[0]).status_code == 303


def test_the_api_takes_no_cookie_and_a_session_ends_with_its_key(audited: Audited) -> None:
    """The finding: the pages' cookie (it held the raw key) was accepted by the API from
    any origin, and signing out only cleared it."""
    base = audited.api.base_url
    url = audited.stack.settings.database_url
    with session_scope(url) as session:
        admin = create_key(session, TENANT, "admin", "pages-admin")
    with httpx.Client(base_url=base, timeout=30) as browser_like:
        signed_in = browser_like.post("/audit/login", headers={"Origin": base},
                                      data={"key": admin.secret})
        assert signed_in.status_code == 303
        page = browser_like.get("/audit/")
        assert page.status_code == 200
        assert page.headers["content-security-policy"] == PAGES_POLICY
        assert page.headers["x-content-type-options"] == "nosniff"
        evil = {"Origin": "http://evil.example"}
        # The cookie alone is no key anywhere in the API, whatever the request.
        for method, path, extra in (
                ("POST", f"/v1/batches/{audited.job_id}/cancel", {}),
                ("POST", "/v1/files", {"data": {"purpose": "batch"},
                                       "files": {"file": ("x.jsonl", b"{}\n")}}),
                ("POST", f"/api/v1/requests/{audited.public(audited.requests['req-002'])}"
                         "/labels", {"json": {"tie": ["tiny-a", "tiny-b"]}}),
                ("GET", "/api/v1/me", {})):
            answer = browser_like.request(method, path, headers=evil, **extra)
            assert answer.status_code == 401, (method, path, answer.text)
            assert answer.json()["error"]["code"] == "missing_api_key"
        # Revoking the key ends its sessions.
        with session_scope(url) as session:
            revoke_key(session, admin.key_id)
        assert browser_like.get("/audit/").status_code == 303
