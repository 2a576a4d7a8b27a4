import hashlib
from pathlib import Path

from workers.tiny_models import build_tiny_generator, ensure_tiny_models


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(f.name.encode() + f.read_bytes())
    return h.hexdigest()


def test_ensure_builds_all_and_is_idempotent(tiny_models: dict[str, Path]) -> None:
    assert set(tiny_models) == {"tiny-a", "tiny-b", "tiny-c", "tiny-ranker", "tiny-fuser"}
    cache = tiny_models["tiny-a"].parent
    before = {n: p.stat().st_mtime_ns for n, p in tiny_models.items()}
    again = ensure_tiny_models(cache)
    assert again == tiny_models
    assert {n: p.stat().st_mtime_ns for n, p in again.items()} == before
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_same_seed_same_files(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    rebuilt = build_tiny_generator(tmp_path / "a", seed=1)
    assert _digest(rebuilt) == _digest(tiny_models["tiny-a"])
    assert _digest(tiny_models["tiny-a"]) != _digest(tiny_models["tiny-b"])
