"""The OpenAI Batch API: files and batches."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(prefix="/v1", tags=["openai-batch"])
