"""The openai backend against a real OpenAI-compatible server: llama.cpp's, serving the
SmolLM2 GGUF file, started here on a free local port."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from ops.demo.models import smollm_gguf
from tests.conftest import MODEL_CACHE
from workers.generation.openai_backend import OpenAIGenerator
from workers.generation.prompts import Prompt

REPO = Path(__file__).resolve().parents[3]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    gguf = smollm_gguf()
    port = _free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    with log.open("wb") as handle:
        process = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host",
             "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--model_alias", "smollm2"],
            stdout=handle, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"llama.cpp server did not start:\n{log.read_text()}")
            time.sleep(0.3)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=20)


def test_chat_endpoint_answers_with_usage(server: str) -> None:
    generator = OpenAIGenerator(server)
    generator.load()
    assert generator.model == "smollm2"  # asked the server, the registry did not say
    results = generator.generate(
        [[{"role": "user", "content": "What is the capital of France?"}]] * 3,
        max_new_tokens=12, temperature=0.0)
    assert all(r.error is None for r in results)
    assert all(r.text.strip() for r in results)
    assert len({r.text for r in results}) == 1, "greedy answers to one prompt agree"
    assert all(r.prompt_tokens > 5 and 0 < r.completion_tokens <= 12 for r in results)


def test_each_prompt_is_sent_with_its_own_params(server: str) -> None:
    generator = OpenAIGenerator(server, model="smollm2")
    story = [{"role": "user", "content": "Write a long story about a dragon and a king."}]
    short, longer, bad = generator.generate_prompts([
        Prompt(story, max_new_tokens=3), Prompt(story, max_new_tokens=24),
        Prompt(story, max_new_tokens=0)])
    assert short.error is None and short.completion_tokens == 3
    assert short.finish_reason == "length"
    assert longer.error is None and longer.completion_tokens > 3
    assert bad.error is not None and "max_new_tokens" in bad.error


def test_completions_endpoint(server: str) -> None:
    generator = OpenAIGenerator(server, model="smollm2", endpoint="completions")
    result = generator.generate([[{"role": "user", "content": "One, two, three,"}]],
                                max_new_tokens=5)[0]
    assert result.error is None and result.completion_tokens > 0


def test_a_request_the_server_refuses_fails_alone(server: str) -> None:
    generator = OpenAIGenerator(server, model="smollm2", max_retries=0)
    ok, refused = generator.generate(
        [[{"role": "user", "content": "Hi"}], [{"role": "tool", "content": "x"}]],
        max_new_tokens=4)
    assert ok.error is None
    assert refused.error is not None and re.search(r"HTTP [45]\d\d: ", refused.error)
    assert f"{server}/chat/completions" in refused.error


def test_a_job_over_the_openai_backend_completes(server: str, tmp_path: Path) -> None:
    registry = tmp_path / "registry.toml"
    entries = "".join(f"""
[[models]]
name = "{name}"
role = "generator"
backend = "openai"
path = "{server}"
params = {{ model = "smollm2", temperature = {temp}, seed = 3, max_new_tokens = 16 }}
""" for name, temp in (("served-greedy", 0.0), ("served-warm", 0.7), ("served-hot", 1.2)))
    registry.write_text(entries + """
[[models]]
name = "tiny-ranker"
role = "ranker"
backend = "pairranker"
path = "builtin:tiny-ranker"

[[models]]
name = "tiny-fuser"
role = "fuser"
backend = "genfuser"
path = "builtin:tiny-fuser"
params = { num_beams = 1, max_new_tokens = 8 }
""")
    prompts = tmp_path / "in.jsonl"
    prompts.write_text("".join(
        json.dumps({"custom_id": f"q{i}", "instruction": f"Name a number bigger than {i}."})
        + "\n" for i in range(4)))
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "BLENDQ_MODEL_CACHE": str(MODEL_CACHE),
           "BLENDQ_REGISTRY_PATH": str(registry)}
    result = subprocess.run([sys.executable, "manage.py", "run", str(prompts), "-o", str(out),
                             "--db", str(tmp_path / "job.db")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["status"] for line in lines] == ["completed"] * 4
    for line in lines:
        assert sorted(c["model"] for c in line["candidates"]) == [
            "served-greedy", "served-hot", "served-warm"]
        assert all(c["ok"] and c["text"].strip() for c in line["candidates"])
        assert all(c["model_revision"] == f"smollm2@{server}" for c in line["candidates"])
        assert len(line["ranking"]["entries"]) == 3
