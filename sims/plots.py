"""PNG plots of runs and experiments (matplotlib, headless)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_accuracy(curve: list[dict[str, Any]], rows: list[dict[str, Any]], path: Path, *, title: str) -> None:
    """Honest peers' global-test accuracy per round: mean, min–max band, and each peer as a thin line."""
    fig, ax = plt.subplots(figsize=(8, 4.8), dpi=110)
    per_peer: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for row in rows:
        if not row["byzantine"] and row["accuracy"] is not None:
            per_peer[row["peer"]].append((row["round"] + 1, row["accuracy"]))
    for points in per_peer.values():
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, color="tab:blue", alpha=0.18, linewidth=0.8)
    if curve:
        rounds = [c["round"] + 1 for c in curve]
        ax.fill_between(
            rounds, [c["honest_accuracy_min"] for c in curve], [c["honest_accuracy_max"] for c in curve],
            color="tab:blue", alpha=0.15, label="min–max over honest peers",
        )
        ax.plot(rounds, [c["honest_accuracy_mean"] for c in curve], color="tab:blue", linewidth=2.2, marker="o",
                label="mean over honest peers")
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy on the global test set")
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title, fontsize=8.5)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
