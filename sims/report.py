"""An experiment's report from its result rows: report.md, heatmap.png and curves/<attack>.png.

Pure functions of the rows that `p2pfed.sims.grid_runner` appends to results.jsonl (one per cell:
attack, defence, byzantine, seed, status, final, curve, wall_seconds, error), so tests can feed
synthetic rows. Every accuracy here is the honest peers' (Byzantine peers are excluded by the simulation).

Why one module of ~450 lines: the three outputs read the same grouped rows (by attack × defence ×
Byzantine count, worst honest peer and majority-baseline marks beside each mean), and more than half
of the lines are the markdown and plot layout; split, each part would re-derive that grouping.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from p2pfed.config import write_atomic
from p2pfed.sims.oracle import ORACLE

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

log = logging.getLogger(__name__)

ATTACK_FREE = "none"
RowKey = tuple[str, int]  # (attack, Byzantine count)


@dataclass(frozen=True)
class CellStats:
    mean: float  # final honest accuracy, mean over the seeds that finished
    sd: float  # sample sd over seeds; with one seed, the sd over that run's honest peers
    seeds: int
    curve: tuple[tuple[int, float], ...]  # (round, honest accuracy mean over seeds)
    worst: float | None = None  # the worst honest peer's final accuracy, over every seed (None: not recorded)
    majority_baseline: float | None = None  # accuracy of always answering the test set's most common class
    byzantine_share: float | None = None  # the worst-off honest peer's share of Byzantine neighbours, max over seeds
    # instruction data: held-out response perplexity of the honest peers (mean over seeds) and of the
    # worst honest peer (highest over seeds); a backdoor's success rate on triggered prompts (mean, worst)
    perplexity: float | None = None
    perplexity_worst: float | None = None
    backdoor: float | None = None
    backdoor_worst: float | None = None

    @property
    def fails_baseline(self) -> bool:
        """Some honest peer ended below the majority-class baseline: a failure, whatever the mean."""
        return self.worst is not None and self.majority_baseline is not None and self.worst < self.majority_baseline


@dataclass(frozen=True)
class GridTable:
    rows: tuple[RowKey, ...]  # the attack-free row first, then attacks in grid order
    defences: tuple[str, ...]
    stats: dict[tuple[RowKey, str], CellStats]
    failed: tuple[dict[str, Any], ...]
    multi_byzantine: bool  # several Byzantine counts: rows are labelled with theirs

    def get(self, row: RowKey, defence: str) -> CellStats | None:
        return self.stats.get((row, defence))

    def baseline(self, defence: str) -> CellStats | None:
        return self.stats.get(((ATTACK_FREE, 0), defence))

    def best(self, row: RowKey) -> set[str]:
        """The defence(s) with the highest mean accuracy on this row (ties all win); the oracle, a
        reference that is told who is Byzantine, does not compete."""
        means = {d: s.mean for d in self.contenders if (s := self.get(row, d)) is not None}
        if not means:
            return set()
        top = max(means.values())
        return {d for d, m in means.items() if m >= top - 1e-12}

    @property
    def contenders(self) -> tuple[str, ...]:
        return tuple(d for d in self.defences if d != ORACLE)

    def label(self, row: RowKey) -> str:
        attack, byzantine = row
        if attack == ATTACK_FREE:
            return "no attack"
        return f"{attack} ({byzantine} Byz)" if self.multi_byzantine else attack

    @property
    def max_seeds(self) -> int:
        return max((s.seeds for s in self.stats.values()), default=0)


def load_results(path: Path) -> list[dict[str, Any]]:
    """The rows of results.jsonl, the latest per cell id; a torn last line (a killed run) is skipped."""
    latest: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s:%d is not valid JSON (an interrupted write?); skipping it", path, number)
            continue
        latest[row["id"]] = row
    return list(latest.values())


def summarise(
    rows: Iterable[dict[str, Any]], *, attacks: Sequence[str] = (), defences: Sequence[str] = ()
) -> GridTable:
    """Group rows by (attack, Byzantine count) × defence; `attacks`/`defences` fix the display order."""
    ok: dict[tuple[RowKey, str], list[dict[str, Any]]] = defaultdict(list)
    failed = []
    for row in rows:
        if row.get("status") != "ok" or row.get("final", {}).get("honest_accuracy_mean") is None:
            failed.append(row)
            continue
        ok[((row["attack"], int(row["byzantine"])), row["defence"])].append(row)
    seen_rows = list(dict.fromkeys(key[0] for key in ok))
    seen_defences = list(dict.fromkeys(key[1] for key in ok))
    attack_rank = {a: i for i, a in enumerate([ATTACK_FREE, *attacks])}
    row_keys = sorted(seen_rows, key=lambda r: (attack_rank.get(r[0], len(attack_rank)), r[1]))
    row_keys.sort(key=lambda r: r[0] != ATTACK_FREE)
    ordered = [d for d in defences if d in seen_defences] + [d for d in seen_defences if d not in defences]
    stats = {key: _stats(group) for key, group in ok.items()}
    counts = {b for a, b in seen_rows if a != ATTACK_FREE}
    return GridTable(tuple(row_keys), tuple(ordered), stats, tuple(failed), multi_byzantine=len(counts) > 1)


def _stats(group: list[dict[str, Any]]) -> CellStats:
    finals = [float(r["final"]["honest_accuracy_mean"]) for r in group]
    if len(finals) > 1:
        sd = float(np.std(finals, ddof=1))
    else:
        sd = float(group[0]["final"].get("honest_accuracy_std") or 0.0)
    by_round: dict[int, list[float]] = defaultdict(list)
    for r in group:
        for point in r.get("curve", []):
            by_round[int(point["round"])].append(float(point["honest_accuracy_mean"]))
    curve = tuple((rnd, float(np.mean(v))) for rnd, v in sorted(by_round.items()))
    worsts = [float(w) for r in group if (w := r["final"].get("honest_accuracy_min")) is not None]
    baselines = [float(b) for r in group if (b := r["final"].get("majority_baseline")) is not None]
    shares = [float(b) for r in group if (b := r["final"].get("byzantine_share_max")) is not None]
    perplexities = _all(group, "honest_perplexity_mean")
    worst_perplexities = _all(group, "honest_perplexity_max")
    backdoors = _all(group, "backdoor_success_mean")
    worst_backdoors = _all(group, "backdoor_success_max")
    return CellStats(
        perplexity=float(np.mean(perplexities)) if perplexities else None,
        perplexity_worst=max(worst_perplexities) if worst_perplexities else None,
        backdoor=float(np.mean(backdoors)) if backdoors else None,
        backdoor_worst=max(worst_backdoors) if worst_backdoors else None,
        mean=float(np.mean(finals)),
        sd=sd,
        seeds=len(finals),
        curve=curve,
        worst=min(worsts) if len(worsts) == len(group) else None,
        majority_baseline=max(baselines) if baselines else None,
        byzantine_share=max(shares) if shares else None,
    )


def _all(group: list[dict[str, Any]], key: str) -> list[float]:
    """`final[key]` of every row of the group, or [] unless every row has it."""
    values = [float(v) for r in group if (v := r["final"].get(key)) is not None]
    return values if len(values) == len(group) else []


# -- report.md -------------------------------------------------------------------------------------


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


def accuracy_table(table: GridTable) -> str:
    head = ["attack", *table.defences, "best"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.rows:
        best = table.best(row)
        cells = []
        for defence in table.defences:
            s = table.get(row, defence)
            text = "—" if s is None else f"{_pct(s.mean)} ± {_pct(s.sd)}"
            text = f"**{text}**" if defence in best else text
            cells.append(f"{text} {BELOW_MARK}" if s is not None and s.fails_baseline else text)
        lines.append(f"| {table.label(row)} | " + " | ".join(cells) + f" | {', '.join(sorted(best))} |")
    return "\n".join(lines)


BELOW_MARK = "⚠"  # some honest peer ended below the majority-class baseline


def worst_table(table: GridTable) -> str:
    """The worst honest peer's final accuracy per cell (lowest over seeds); ⚠ below the baseline."""
    head = ["attack", *table.defences]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.rows:
        cells = []
        for defence in table.defences:
            s = table.get(row, defence)
            if s is None or s.worst is None:
                cells.append("—")
            else:
                cells.append(_pct(s.worst) + (f" {BELOW_MARK}" if s.fails_baseline else ""))
        lines.append(f"| {table.label(row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def baseline_summary(table: GridTable) -> str | None:
    """One sentence: the majority-class baseline and the cells where an honest peer ends below it."""
    baselines = {s.majority_baseline for s in table.stats.values() if s.majority_baseline is not None}
    if not baselines:
        return None
    failing = [
        f"{table.label(row)}/{defence}"
        for row in table.rows
        for defence in table.defences
        if (s := table.get(row, defence)) is not None and s.fails_baseline
    ]
    text = (
        f"Majority-class baseline (always answering the test set's most common class): {_pct(max(baselines))}%. "
    )
    if failing:
        return text + f"{BELOW_MARK} An honest peer ends below it in {len(failing)} cell(s): {', '.join(failing)}."
    return text + "Every honest peer ends above it in every cell."


def exposure_summary(table: GridTable) -> str | None:
    """One sentence: the largest share of Byzantine neighbours an honest peer has, per Byzantine count."""
    shares: dict[int, float] = {}
    for ((attack, count), _), stats in table.stats.items():
        if attack != ATTACK_FREE and stats.byzantine_share is not None:
            shares[count] = max(shares.get(count, 0.0), stats.byzantine_share)
    if not shares:
        return None
    parts = [f"{_pct(share)}% with {count} Byzantine" for count, share in sorted(shares.items())]
    return "Worst-off honest peer's share of Byzantine neighbours (on the graph, over seeds): " + ", ".join(parts) + "."


def _perplexity(value: float | None) -> str:
    """2 decimals; a model an attack destroyed (perplexity in the billions) in scientific notation."""
    if value is None:
        return "—"
    return f"{value:.2f}" if value < 1e5 else f"{value:.2e}"


def perplexity_table(table: GridTable) -> str:
    """Instruction data: honest perplexity (worst honest peer) per cell, and its change against the same
    defence without attack, in %; a backdoor row also gives its attack success rate."""
    head = ["attack", *table.defences]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.rows:
        cells = []
        for defence in table.defences:
            s, base = table.get(row, defence), table.baseline(defence)
            if s is None or s.perplexity is None:
                cells.append("—")
                continue
            text = f"{_perplexity(s.perplexity)} ({_perplexity(s.perplexity_worst)})"
            if row[0] != ATTACK_FREE and base is not None and base.perplexity:
                ratio = s.perplexity / base.perplexity
                text += f", {100 * (ratio - 1):+.1f} %" if ratio < 10 else f", {ratio:.3g}×"
            if s.backdoor is not None:
                text += f"; backdoor {_pct(s.backdoor)} % (worst {_pct(s.backdoor_worst or 0.0)} %)"
            cells.append(text)
        lines.append(f"| {table.label(row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def drop_table(table: GridTable) -> str:
    """Points of accuracy each defence loses under each attack, vs the same defence without attack."""
    head = ["attack", *table.defences]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in table.rows:
        if row[0] == ATTACK_FREE:
            continue
        drops: dict[str, float] = {}
        for defence in table.defences:
            s, base = table.get(row, defence), table.baseline(defence)
            if s is not None and base is not None:
                drops[defence] = 100 * (base.mean - s.mean)
        least = min((drops[d] for d in table.contenders if d in drops), default=math.nan)
        cells = []
        for defence in table.defences:
            if defence not in drops:
                cells.append("—")
                continue
            text = f"{drops[defence]:+.1f}"
            best = defence in table.contenders and drops[defence] <= least + 1e-9
            cells.append(f"**{text}**" if best else text)
        lines.append(f"| {table.label(row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_markdown(
    table: GridTable,
    *,
    title: str = "p2pfed experiment",
    config_toml: str | None = None,
    wall_seconds: float | None = None,
    cell_seconds: float | None = None,
    curves: Sequence[Path] = (),
) -> str:
    sd_meaning = (
        "sample sd over seeds" if table.max_seeds > 1 else "sd over the honest peers of the one seed run"
    )
    parts = [
        f"# {title}",
        "",
        f"Final accuracy of the **honest** peers on the global test set, in %, mean ± sd ({sd_meaning}); "
        "Byzantine peers are excluded from every figure. The best defence per attack is in **bold**."
        + (
            " The `oracle` column is a reference, not a contender: it is told who is Byzantine, drops exactly"
            " them and runs Bristle on the rest, so it shows what a perfect filter reaches when the Byzantine"
            " peers' data is lost."
            if ORACLE in table.defences
            else ""
        ),
        "",
        accuracy_table(table),
        "",
        "![final honest accuracy, defence × attack](heatmap.png)",
    ]
    if (exposure := exposure_summary(table)) is not None:
        parts += ["", exposure]
    if any(s.perplexity is not None for s in table.stats.values()):
        parts += [
            "",
            "## Response perplexity",
            "",
            "Instruction data: held-out response perplexity of the honest peers (lower is better), mean "
            "(worst honest peer), and its change against the same defence without attack. Under a backdoor,"
            " the share of triggered held-out prompts whose greedy answer carries the payload (mean over"
            " honest peers, worst peer). Accuracy above is next-token accuracy.",
            "",
            perplexity_table(table),
        ]
    if any(s.worst is not None for s in table.stats.values()):
        parts += [
            "",
            "## Worst honest peer",
            "",
            "Final accuracy of the worst honest peer, in % (the lowest over seeds). A mean can hide a peer the"
            f" defence left behind; {BELOW_MARK} marks a cell where one ends below the majority-class baseline,"
            " a failure however good the mean.",
            "",
            worst_table(table),
        ]
        if (sentence := baseline_summary(table)) is not None:
            parts += ["", sentence]
    if any(r[0] != ATTACK_FREE for r in table.rows) and any(r[0] == ATTACK_FREE for r in table.rows):
        parts += [
            "",
            "## Drop vs no attack",
            "",
            "Points of accuracy lost against the same defence without attack (lower is better; "
            "negative = the attack did not hurt). The smallest drop per attack is in **bold**.",
            "",
            drop_table(table),
        ]
    if curves:
        parts += ["", "## Accuracy per round", ""]
        parts += [f"- [{p.stem}](curves/{p.name})" for p in curves]
    if table.failed:
        parts += ["", "## Failed cells", "", "Rerun the same command to retry them.", ""]
        for row in table.failed:
            error = str(row.get("error") or "no final accuracy").splitlines()[0][:300]
            parts.append(
                f"- {row.get('attack')}/{row.get('defence')} byz={row.get('byzantine')} "
                f"seed={row.get('seed')} (`{row.get('id')}`): {error}"
            )
    timing = []
    if wall_seconds is not None:
        timing.append(f"wall time of the last session: {_duration(wall_seconds)}")
    if cell_seconds is not None:
        timing.append(f"compute summed over cells: {_duration(cell_seconds)}")
    if timing:
        parts += ["", "## Time", "", "; ".join(timing) + "."]
    if config_toml:
        parts += ["", "## Configuration", "", "```toml", config_toml.rstrip(), "```"]
    return "\n".join(parts) + "\n"


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


# -- plots -----------------------------------------------------------------------------------------


def _save(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)


def plot_heatmap(table: GridTable, path: Path) -> None:
    """Defences (rows) × attacks (columns), annotated with the final honest accuracy in %."""
    values = np.full((len(table.defences), len(table.rows)), np.nan)
    for i, defence in enumerate(table.defences):
        for j, row in enumerate(table.rows):
            if (s := table.get(row, defence)) is not None:
                values[i, j] = 100 * s.mean
    width = max(5.0, 1.0 + 0.9 * len(table.rows))
    height = max(3.0, 1.4 + 0.45 * len(table.defences))
    fig, ax = plt.subplots(figsize=(width, height), dpi=110)
    finite = values[np.isfinite(values)]
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 100.0)
    cmap = plt.get_cmap("RdYlGn").copy()
    cmap.set_bad("#dddddd")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=low, vmax=max(high, low + 1e-6), aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            bold = table.defences[i] in table.best(table.rows[j])
            cell = table.get(table.rows[j], table.defences[i])
            mark = "*" if cell is not None and cell.fails_baseline else ""
            ax.text(j, i, "—" if np.isnan(v) else f"{v:.1f}{mark}", ha="center", va="center", fontsize=8,
                    fontweight="bold" if bold else "normal", color="black")
    ax.set_xticks(range(len(table.rows)), [table.label(r) for r in table.rows], rotation=35, ha="right")
    ax.set_yticks(range(len(table.defences)), list(table.defences))
    ax.set_xlabel("attack")
    ax.set_ylabel("defence")
    ax.set_title(
        "final honest accuracy (%); bold = best defence per attack;"
        " * = an honest peer ends below the majority-class baseline",
        fontsize=9,
    )
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="accuracy (%)")
    fig.tight_layout()
    _save(fig, path)


def curve_name(table: GridTable, row: RowKey) -> str:
    name = row[0] if not table.multi_byzantine or row[0] == ATTACK_FREE else f"{row[0]}-{row[1]}byz"
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def plot_curves(table: GridTable, directory: Path) -> list[Path]:
    """curves/<attack>.png: one line per defence (mean over seeds); its attack-free curve dashed."""
    colours = {d: plt.get_cmap("tab10")(i % 10) for i, d in enumerate(table.defences)}
    paths = []
    for row in table.rows:
        fig, ax = plt.subplots(figsize=(9.5, 4.8), dpi=110)
        for defence in table.defences:
            s = table.get(row, defence)
            if s is None or not s.curve:
                continue
            xs, ys = zip(*s.curve, strict=True)
            ax.plot([x + 1 for x in xs], ys, color=colours[defence], linewidth=2, marker="o", label=defence)
            base = table.baseline(defence)
            if row[0] != ATTACK_FREE and base is not None and base.curve:
                bx, by = zip(*base.curve, strict=True)
                ax.plot([x + 1 for x in bx], by, color=colours[defence], linewidth=1, linestyle="--", alpha=0.6)
        if row[0] != ATTACK_FREE:
            ax.plot([], [], color="grey", linestyle="--", label="same defence, no attack")
        ax.set_xlabel("round")
        ax.set_ylabel("honest accuracy on the global test set")
        ax.set_ylim(0, 1.01)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
        ax.set_title(f"{table.label(row)}: honest accuracy per round (mean over seeds)", fontsize=9)
        fig.tight_layout()
        path = directory / f"{curve_name(table, row)}.png"
        _save(fig, path)
        paths.append(path)
    return paths


def write_report(
    rows: Iterable[dict[str, Any]],
    out: Path,
    *,
    attacks: Sequence[str] = (),
    defences: Sequence[str] = (),
    config_toml: str | None = None,
    wall_seconds: float | None = None,
    title: str = "p2pfed experiment",
) -> list[Path]:
    """Write report.md, heatmap.png and curves/*.png into `out`; returns the paths written."""
    rows = list(rows)
    table = summarise(rows, attacks=attacks, defences=defences)
    written: list[Path] = []
    if table.rows:
        plot_heatmap(table, out / "heatmap.png")
        written.append(out / "heatmap.png")
        written += plot_curves(table, out / "curves")
    cell_seconds = sum(float(r.get("wall_seconds") or 0.0) for r in rows)
    text = render_markdown(
        table,
        title=title,
        config_toml=config_toml,
        wall_seconds=wall_seconds,
        cell_seconds=cell_seconds,
        curves=[p for p in written if p.parent.name == "curves"],
    )
    write_atomic(out / "report.md", text.encode())
    return [out / "report.md", *written]
