"""What a peer reports at the end of each round."""

from __future__ import annotations

from dataclasses import dataclass

from p2pfed.types import FloatVector


@dataclass(frozen=True)
class RoundReport:
    """What a peer reports at the end of each round (metrics, consensus distance, plots)."""

    round: int
    peer: str
    index: int
    byzantine: bool
    vector: FloatVector
    train_loss: float
    accuracy: float | None
    loss: float | None
    bytes_sent: int
    bytes_received: int
    seconds: float
    outcomes: dict[str, int]  # verdict outcome -> count, this round
    rejections: dict[str, int]  # rejection reason -> count, cumulative
    reputation: dict[str, float]
