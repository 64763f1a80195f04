"""Run metrics: `metrics.jsonl` (one JSON object per line, each with `step`) and `loss.png`."""

from __future__ import annotations

import json
import math
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


def read_metrics(path) -> list[dict]:
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by a crash ends the usable log
    return records


class MetricsLog:
    """Append-only metrics log. On resume from step S, lines logged after S are dropped first:
    they are recomputed identically, so the file reads as if the run had never stopped."""

    def __init__(self, path, resume_step: int | None = None):
        self.path = Path(path)
        kept = [r for r in read_metrics(self.path) if resume_step is not None and r["step"] <= resume_step]
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(self.path)
        self.records = kept

    def write(self, record: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(clean) + "\n")
        self.records.append(clean)


def plot_losses(records: list[dict], out_png, title: str = "") -> None:
    """Train and validation loss against step, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    curves = (("batch_loss", "train (mini-batch)", "-", 0.35), ("train_loss", "train (eval)", "s-", 1.0),
              ("val_loss", "validation (eval)", "o-", 1.0))
    for key, label, style, alpha in curves:
        pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        if pts:
            ax.plot(*zip(*pts), style, label=label, markersize=3, linewidth=1.2, alpha=alpha)
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
