"""A production worker loads no demo code: the demo models and the demo ranker's data live
in ``ops/demo`` and only the command line and the benchmarks import them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

_PROBE = """
import json, sys
import workers.ranking.tasks, workers.generation.tasks, workers.fusion.tasks
ours = ("db", "orchestration", "workers", "ops")
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ours)))
"""


def test_the_stage_tasks_load_no_demo_module() -> None:
    # A fresh interpreter: in this one, other tests may have imported the demo already.
    done = subprocess.run([sys.executable, "-c", _PROBE], cwd=REPO, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert "workers.ranking.tasks" in loaded  # the probe saw the modules at all
    demo = [m for m in loaded if m == "ops.demo" or m.startswith("ops.demo.")
            or "demo" in m.rsplit(".", 1)[-1]]
    assert demo == []
    # The tiny random models are a runtime fallback (builtin: registry paths), loaded
    # only when such an entry is; importing the tasks does not build or import them.
    assert "workers.tiny_models" not in loaded
