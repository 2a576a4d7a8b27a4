"""A call past the task time limit: the task gets DeadlineExceeded at once, and the
worker's liveness probe fails naming the call until the call ends."""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from ops.metrics import WorkerState, wsgi_app
from workers.deadline import Deadline, DeadlineExceeded, hung_calls


def _healthz(state: WorkerState) -> tuple[str, dict[str, Any]]:
    answer: dict[str, str] = {}
    body = wsgi_app(state.live, {})({"PATH_INFO": "/healthz"},
                                    lambda status, _: answer.update(status=status))
    return answer["status"], json.loads(b"".join(body))


def test_a_hung_call_fails_liveness_until_it_ends() -> None:
    release, ended = threading.Event(), threading.Event()

    def hangs() -> str:
        release.wait(30)
        ended.set()
        return "late"

    state = WorkerState()
    assert _healthz(state)[0] == "200 OK"
    assert Deadline(5).run("ranking", lambda: "quick") == "quick"
    assert hung_calls() == []  # a call that ended in time leaves nothing behind
    with pytest.raises(DeadlineExceeded, match="generation stopped at the task time limit"):
        Deadline(0.2).run("generation", hangs)
    try:
        assert [c.split(" (")[0] for c in hung_calls()] == ["generation"]
        status, body = _healthz(state)
        assert status == "503 Service Unavailable" and body["failed"] == ["process"]
        assert "model call hung past the task time limit: generation (for" in \
            body["checks"]["process"]
    finally:
        release.set()
    assert ended.wait(5)
    for _ in range(100):  # the thread returns just after setting the event
        if not hung_calls():
            break
        threading.Event().wait(0.01)
    assert hung_calls() == []
    assert _healthz(state)[0] == "200 OK"
