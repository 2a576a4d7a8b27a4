"""Which registry params configure a backend itself rather than one generation call."""

from __future__ import annotations

from typing import Any

from orchestration.registry import ModelEntry

BACKEND_PARAMS = {
    "transformers": ("max_context", "overflow", "device", "token_budget",
                     "step_rows"),
    "vllm": ("max_context", "overflow", "gpu_memory_utilization", "tensor_parallel_size",
             "dtype"),
    "openai": ("model", "endpoint", "concurrency", "timeout", "max_retries", "api_key_env"),
}


def backend_options(entry: ModelEntry) -> dict[str, Any]:
    allowed = BACKEND_PARAMS.get(entry.backend, ())
    return {k: v for k, v in entry.params.items() if k in allowed}
