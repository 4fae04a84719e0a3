"""``DRY_RUN=1 bash tools/gpu_acceptance.sh``: the GPU acceptance run's steps on CPU at
tiny sizes, so that the script a GPU machine runs cannot rot between GPU sessions."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_acceptance_script_runs_every_step_on_cpu(tmp_path):
    work = tmp_path / "work"
    env = {**os.environ, "DRY_RUN": "1", "WORK_DIR": str(work), "PYTHON": sys.executable,
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", str(ROOT / "tools" / "gpu_acceptance.sh")], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    out = work / "results"
    summary = json.loads((out / "gpu_summary.json").read_text())
    assert summary["dry_run"] is True
    steps = {s["step"]: s["status"] for s in summary["steps"]}
    assert list(steps) == ["deps", "env", "tests", "teacher", "recipe", "recipe_ddp",
                           "mixers", "speed"]
    assert all(status.startswith("ok") for status in steps.values()), steps
    for name in ("env", "tests", "recipe", "recipe_ddp", "mixers", "speed"):
        assert (out / f"gpu_{name}.json").is_file(), name
    recipe = json.loads((out / "gpu_recipe.json").read_text())
    assert recipe["updates"] > 0 and recipe["finite"]
    assert [g["passed"] for g in summary["targets"]] == [None] * 4   # not judged on CPU
    table = (out / "gpu_acceptance.md").read_text()
    assert "| recipe | ok |" in table and "not judged" in table
