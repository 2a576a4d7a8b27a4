"""blendq's native API: inline jobs, status, streamed results, audit and labels."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from db.models import ApiRole
from ops.api.deps import Principal, require

router = APIRouter(prefix="/api/v1", tags=["native"])
ANY_ROLE = require(ApiRole.SUBMITTER, ApiRole.AUDITOR)


@router.get("/me", summary="The calling key: its id, tenant and role")
def me(principal: Principal = Depends(ANY_ROLE)) -> dict[str, Any]:
    return {"key_id": principal.key_id, "tenant": principal.tenant, "role": principal.role}
