"""What a running node tells the outside: `status.json` (atomic, rewritten every second and every round),
`metrics.jsonl` (one row per round) and a one-line progress report per round for the terminal."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p2pfed.config import write_atomic
from p2pfed.errors import ConfigError
from p2pfed.peer.peer import RoundReport

STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"


@dataclass
class NodeStatus:
    """The mutable state behind status.json; `write` snapshots it."""

    path: Path
    peer_id: str
    run_topic: str
    rounds: int
    state: str = "starting"  # starting, loading, waiting, running, finished, stopped
    started: float = field(default_factory=time.time)
    round: int = 0  # rounds completed (= the next round to run)
    resumed_from: int | None = None
    listen_addrs: list[str] = field(default_factory=list)
    neighbours: dict[str, dict[str, Any]] = field(default_factory=dict)
    last_eval: dict[str, Any] | None = None
    rejections: dict[str, int] = field(default_factory=dict)
    transport: dict[str, int] = field(default_factory=dict)
    message: str = ""
    reachability: str = "unknown"  # public, private (--private or AutoNAT's verdict), unknown

    def as_dict(self) -> dict[str, Any]:
        return {
            "peer_id": self.peer_id,
            "pid": os.getpid(),
            "run": self.run_topic,
            "state": self.state,
            "message": self.message,
            "round": self.round,
            "rounds": self.rounds,
            "resumed_from": self.resumed_from,
            "listen_addrs": self.listen_addrs,
            "reachability": self.reachability,
            "neighbours": self.neighbours,
            "last_eval": self.last_eval,
            "bytes_in": self.transport.get("bytes_in", 0),
            "bytes_out": self.transport.get("bytes_out", 0),
            "rejections": self.rejections,
            "transport": self.transport,
            "started": self.started,
            "updated": time.time(),
        }

    def write(self) -> None:
        write_atomic(self.path, (json.dumps(self.as_dict(), indent=2) + "\n").encode())


def metrics_row(report: RoundReport, neighbours: Iterable[str]) -> dict[str, Any]:
    """One metrics.jsonl row of a node: the round's report and the neighbours it ended the round with."""
    ids = sorted(neighbours)
    return {
        "round": report.round,
        "peer_id": report.peer,
        "accuracy": report.accuracy,
        "loss": report.loss,
        "train_loss": report.train_loss,
        "bytes_sent": report.bytes_sent,
        "bytes_received": report.bytes_received,
        "seconds": round(report.seconds, 3),
        "neighbours": len(ids),
        "neighbour_ids": ids,
        "outcomes": report.outcomes,
        "rejections": report.rejections,
        "reputation": {k: round(v, 4) for k, v in report.reputation.items()},
        "time": time.time(),
    }


def append_metrics(directory: Path, row: Mapping[str, Any]) -> None:
    with (directory / METRICS_FILE).open("a") as fh:
        fh.write(json.dumps(row) + "\n")


def read_metrics(directory: Path) -> list[dict[str, Any]]:
    path = Path(directory) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def read_status(directory: Path) -> dict[str, Any]:
    path = Path(directory) / STATUS_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"no {STATUS_FILE} in {directory}: has `p2pfed join --out {directory}` run?") from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc


def progress_line(
    report: RoundReport, rounds: int, neighbours: int, transport: Mapping[str, int], *, instruction: bool = False
) -> str:
    """One line per round on the terminal. Instruction runs show what a person judges them by: held-out
    perplexity and token accuracy (the next answer token predicted right), not a class accuracy."""
    if report.accuracy is None:
        accuracy = ""
    elif instruction and report.loss is not None:
        accuracy = f" · ppl {math.exp(min(report.loss, 50.0)):.2f} · token acc {report.accuracy:.3f}"
    else:
        accuracy = f" · acc {report.accuracy:.3f}"
    rejected = sum(report.rejections.values())
    return (
        f"round {report.round + 1}/{rounds}{accuracy} · loss {report.train_loss:.3f} · "
        f"{neighbours} neighbours · kept {report.outcomes.get('kept', 0)} missing "
        f"{report.outcomes.get('missing', 0)} · in {_mb(transport.get('bytes_in', 0))} out "
        f"{_mb(transport.get('bytes_out', 0))} · rejected {rejected} · {report.seconds:.1f} s"
    )


def format_status(status: Mapping[str, Any], now: float | None = None) -> str:
    """The human-readable form of a status.json, as `p2pfed status` prints it."""
    now = time.time() if now is None else now
    age = now - float(status.get("updated", now))
    lines = [
        f"peer     {status.get('peer_id')}  (pid {status.get('pid')})",
        f"topic    {status.get('run')}",
        f"state    {status.get('state')}{'  — ' + status['message'] if status.get('message') else ''}"
        f"  (updated {age:.0f} s ago)",
        f"round    {status.get('round')}/{status.get('rounds')}"
        + (f"  (resumed from round {status['resumed_from']})" if status.get("resumed_from") is not None else ""),
    ]
    for addr in status.get("listen_addrs", [])[:4]:
        lines.append(f"listen   {addr}")
    last = status.get("last_eval")
    if last:
        lines.append(f"eval     round {last['round'] + 1}: accuracy {last['accuracy']:.4f}, loss {last['loss']:.4f}")
    lines.append(f"traffic  in {_mb(status.get('bytes_in', 0))}, out {_mb(status.get('bytes_out', 0))}")
    neighbours = status.get("neighbours", {})
    lines.append(f"neighbours ({len(neighbours)}):")
    for pid, info in sorted(neighbours.items(), key=lambda kv: -kv[1].get("reputation", 0.0)):
        lines.append(f"  {pid}  reputation {info.get('reputation', 0.0):.3f}  degree {info.get('degree', '?')}")
    rejections = status.get("rejections", {})
    if rejections:
        lines.append("rejections:")
        lines += [f"  {reason:<18} {count}" for reason, count in sorted(rejections.items(), key=lambda kv: -kv[1])]
    else:
        lines.append("rejections: none")
    failures = {k: v for k, v in status.get("transport", {}).items() if "fail" in k}
    if failures:
        lines.append("transport failures: " + ", ".join(f"{k} {v}" for k, v in sorted(failures.items())))
    return "\n".join(lines)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
