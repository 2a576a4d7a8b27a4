"""What ``body.model`` may say in an OpenAI Batch line sent to blendq, checked per line as
OpenAI checks its own (``model_not_found``, ``mismatched_model``).

blendq runs an ensemble, so a model is a set of generators:

* ``blendq``: the alias of the ensemble the batch runs (its metadata's ``blendq.models``,
  else the tenant's defaults, else every generator);
* registered generators joined by ``+``, optionally after ``blendq:``: ``tiny-a+tiny-b``,
  ``blendq:tiny-a+tiny-b`` (the form the batch object's ``model`` field shows), ``tiny-a``.

One model per file: every line that names one names the same. When the batch's metadata
does not choose the models, the first line's set does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from orchestration.registry import Registry, RegistryError
from orchestration.validation import InvalidLine, ParsedRequest

ALIAS = "blendq"
SET_PREFIX = "blendq:"
FIELD = "body.model"
# An upload's first lines are read to find the model; past this many, none is named.
SCAN_LINES = 100


def generator_set(registry: Registry, model: str) -> list[str] | None:
    """The generators ``model`` names, [] for the alias, None when it names nothing
    registered."""
    if model == ALIAS:
        return []
    names = model.removeprefix(SET_PREFIX).split("+")
    if not all(names) or len(set(names)) != len(names):
        return None
    for name in names:
        try:
            registry.get(name, "generator")
        except RegistryError:
            return None
    return names


def first_model(lines: Iterable[bytes]) -> str | None:
    """``body.model`` of the first line that parses and names one (what OpenAI's batch
    takes as the file's model); lines that do not parse are validation's business."""
    for index, raw in enumerate(lines):
        if index >= SCAN_LINES:
            return None
        try:
            obj = json.loads(raw.removeprefix(b"\xef\xbb\xbf"))
        except ValueError:
            continue
        body = obj.get("body") if isinstance(obj, dict) else None
        model = body.get("model") if isinstance(body, dict) else None
        if isinstance(model, str):
            return model
    return None


class ModelCheck:
    """Refuses lines whose model names nothing registered, differs from the file's first
    model, or names a set other than the one the job runs."""

    def __init__(self, registry: Registry, job_models: list[str]) -> None:
        self.registry = registry
        self.job_models = list(job_models)
        self.first: tuple[str, int] | None = None  # the file's model and its line

    def __call__(self, parsed: ParsedRequest) -> None:
        model = parsed.params.get("requested_model")
        if model is None:
            return  # a native line, or an OpenAI line naming none: the batch's ensemble
        names = generator_set(self.registry, model)
        if names is None:
            known = ", ".join(e.name for e in self.registry.by_role("generator")) or "none"
            raise InvalidLine(FIELD, f"the model {model!r} does not exist: name "
                                     f"{ALIAS!r} (this batch's ensemble) or registered "
                                     f"generators joined by '+' (generators: {known})",
                              code="model_not_found")
        if self.first is None:
            self.first = (model, parsed.line_no)
        elif model != self.first[0]:
            raise InvalidLine(FIELD, f"{model!r} differs from {self.first[0]!r} on line "
                                     f"{self.first[1]}: a batch runs one model",
                              code="mismatched_model")
        if names and sorted(names) != sorted(self.job_models):
            raise InvalidLine(FIELD, f"{model!r} is not the ensemble this batch runs "
                                     f"({'+'.join(self.job_models)}, from its options)",
                              code="mismatched_model")
