"""Helpers shared by the benchmark scripts: config loading, machine description, result files."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def load_config(name: str, preset: str = "", **overrides):
    """configs/<name>.py:<preset> with dotted overrides {"train.steps": 10}."""
    from nrgpt_jax.run_config import load_config_file

    return load_config_file(ROOT / "configs" / f"{name}.py", preset, overrides)


def machine() -> dict:
    import jax

    cpu = ""
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(), "jax": jax.__version__,
            "devices": [str(d) for d in jax.devices()],
            "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                     text=True).stdout.strip()}


def write_results(name: str, payload: dict, table: str) -> None:
    """benchmarks/results/<name>.json and <name>.md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(table)
