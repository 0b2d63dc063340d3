"""The experiment report from synthetic result rows: table values, bold best, drop view, files."""

from __future__ import annotations

import json
from pathlib import Path

from p2pfed.sims.report import load_results, summarise, write_report


def row(attack: str, defence: str, seed: int, acc: float, *, byzantine: int = 3, peer_sd: float = 0.02,
        status: str = "ok") -> dict:
    byzantine = 0 if attack == "none" else byzantine
    return {
        "id": f"{attack}-{defence}-{byzantine}-{seed}",
        "attack": attack,
        "defence": defence,
        "byzantine": byzantine,
        "seed": seed,
        "status": status,
        "final": {"honest_accuracy_mean": acc, "honest_accuracy_std": peer_sd} if status == "ok" else {},
        "curve": [{"round": 0, "honest_accuracy_mean": acc / 2}, {"round": 1, "honest_accuracy_mean": acc}]
        if status == "ok" else [],
        "wall_seconds": 10.0,
        "error": None if status == "ok" else "RuntimeError: boom",
    }


def grid_rows() -> list[dict]:
    return [
        row("ipm", "mean", 0, 0.30), row("ipm", "mean", 1, 0.40),
        row("ipm", "bristle", 0, 0.80), row("ipm", "bristle", 1, 0.90),
        row("none", "mean", 0, 0.90), row("none", "mean", 1, 0.92),
        row("none", "bristle", 0, 0.88), row("none", "bristle", 1, 0.90),
    ]


def table_line(text: str, label: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {label} |"))


def test_report_shows_mean_and_sample_sd_over_seeds_with_the_best_defence_in_bold(tmp_path: Path) -> None:
    write_report(grid_rows(), tmp_path, attacks=["none", "ipm"], defences=["mean", "bristle"])
    text = (tmp_path / "report.md").read_text()
    # ipm: mean 35.0 ± 7.1 (sd of 0.30, 0.40 with n-1), bristle 85.0 ± 7.1 and best
    assert table_line(text, "ipm") == "| ipm | 35.0 ± 7.1 | **85.0 ± 7.1** | bristle |"
    assert table_line(text, "no attack") == "| no attack | **91.0 ± 1.4** | 89.0 ± 1.4 | mean |"
    lines = text.splitlines()
    assert lines.index(table_line(text, "no attack")) < lines.index(table_line(text, "ipm"))


def test_drop_view_is_points_lost_against_the_same_defence_without_attack(tmp_path: Path) -> None:
    write_report(grid_rows(), tmp_path, attacks=["none", "ipm"], defences=["mean", "bristle"])
    drop_section = (tmp_path / "report.md").read_text().split("## Drop vs no attack")[1]
    assert table_line(drop_section, "ipm") == "| ipm | +56.0 | **+4.0** |"


def test_a_single_seed_reports_the_sd_over_honest_peers(tmp_path: Path) -> None:
    rows = [row("none", "mean", 0, 0.9, peer_sd=0.031), row("alie", "mean", 0, 0.5, peer_sd=0.1)]
    write_report(rows, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert table_line(text, "alie") == "| alie | **50.0 ± 10.0** | mean |"
    assert "sd over the honest peers" in text


def test_report_writes_heatmap_and_one_curve_per_attack(tmp_path: Path) -> None:
    written = write_report(grid_rows(), tmp_path, config_toml="[base]\npeers = 4\n", wall_seconds=75)
    for name in ("report.md", "heatmap.png", "curves/none.png", "curves/ipm.png"):
        path = tmp_path / name
        assert path in written
        assert path.stat().st_size > 1000 or name == "report.md"
    assert (tmp_path / "heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (tmp_path / "report.md").read_text()
    assert "peers = 4" in text and "1m15s" in text
    assert not list(tmp_path.rglob(".*tmp*")), "no temporary files left behind"


def test_failed_cells_are_listed_and_left_out_of_the_table(tmp_path: Path) -> None:
    rows = [*grid_rows(), row("alie", "mean", 0, 0.0, status="error")]
    write_report(rows, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "## Failed cells" in text and "RuntimeError: boom" in text
    assert "| alie |" not in text


def test_several_byzantine_counts_get_their_own_rows_and_curves(tmp_path: Path) -> None:
    rows = [row("none", "mean", 0, 0.9), row("ipm", "mean", 0, 0.7, byzantine=2), row("ipm", "mean", 0, 0.4, byzantine=5)]
    write_report(rows, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "| ipm (2 Byz) | **70.0 ± 2.0** |" in text and "| ipm (5 Byz) | **40.0 ± 2.0** |" in text
    assert (tmp_path / "curves" / "ipm-2byz.png").exists() and (tmp_path / "curves" / "ipm-5byz.png").exists()


def test_ties_are_all_bold() -> None:
    table = summarise([row("ipm", "mean", 0, 0.5), row("ipm", "median", 0, 0.5), row("ipm", "krum", 0, 0.4)])
    assert table.best(("ipm", 3)) == {"mean", "median"}


def test_load_results_skips_a_torn_line_and_keeps_the_latest_row_per_cell(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    first, retried = row("ipm", "mean", 0, 0.0, status="error"), row("ipm", "mean", 0, 0.3)
    path.write_text(json.dumps(first) + "\n" + json.dumps(retried) + "\n" + '{"id": "x", "att')
    assert load_results(path) == [retried]


def test_the_oracle_is_shown_but_never_the_best(tmp_path: Path) -> None:
    rows = [*grid_rows(), row("ipm", "oracle", 0, 0.95), row("none", "oracle", 0, 0.99)]
    write_report(rows, tmp_path, attacks=["none", "ipm"], defences=["mean", "bristle", "oracle"])
    text = (tmp_path / "report.md").read_text()
    assert table_line(text, "ipm").endswith("| **85.0 ± 7.1** | 95.0 ± 2.0 | bristle |")
    assert "oracle` column is a reference" in text
    drop_section = text.split("## Drop vs no attack")[1]
    assert table_line(drop_section, "ipm") == "| ipm | +56.0 | **+4.0** | +4.0 |"


def test_the_worst_honest_peer_is_reported_and_a_peer_below_the_majority_baseline_is_flagged(
    tmp_path: Path,
) -> None:
    """A good mean with one honest peer left at chance is a failure, and the report says so."""
    rows = grid_rows()
    for r in rows:
        r["final"].update(honest_accuracy_min=r["final"]["honest_accuracy_mean"] - 0.05, majority_baseline=0.4)
    rows[2]["final"]["honest_accuracy_min"] = 0.12  # ipm/bristle seed 0: one peer stuck far below 40 %
    write_report(rows, tmp_path, attacks=["none", "ipm"], defences=["mean", "bristle"])
    text = (tmp_path / "report.md").read_text()
    worst = text.split("## Worst honest peer")[1]
    # lowest over seeds: ipm/mean min(0.25, 0.35); ipm/bristle min(0.12, 0.85)
    assert table_line(worst, "ipm") == "| ipm | 25.0 ⚠ | 12.0 ⚠ |"
    assert table_line(worst, "no attack") == "| no attack | 85.0 | 83.0 |"
    assert table_line(text, "ipm") == "| ipm | 35.0 ± 7.1 ⚠ | **85.0 ± 7.1** ⚠ | bristle |"
    assert "baseline (always answering the test set's most common class): 40.0%" in text
    assert "below it in 2 cell(s): ipm/mean, ipm/bristle" in text


def test_cells_without_a_recorded_worst_peer_show_a_dash_not_a_pass(tmp_path: Path) -> None:
    rows = grid_rows()
    rows[0]["final"].update(honest_accuracy_min=0.2, majority_baseline=0.4)  # one seed of ipm/mean only
    for r in rows[2:4]:  # both seeds of ipm/bristle
        r["final"].update(honest_accuracy_min=0.7, majority_baseline=0.4)
    write_report(rows, tmp_path, attacks=["none", "ipm"], defences=["mean", "bristle"])
    worst = (tmp_path / "report.md").read_text().split("## Worst honest peer")[1]
    assert table_line(worst, "ipm") == "| ipm | — | 70.0 |"


def test_the_worst_off_honest_peers_byzantine_share_is_summarised_per_byzantine_count(tmp_path: Path) -> None:
    rows = [row("none", "mean", 0, 0.9), row("ipm", "mean", 0, 0.5, byzantine=3), row("ipm", "mean", 1, 0.6, byzantine=3)]
    for r, share in zip(rows, (0.0, 0.5, 0.75), strict=True):
        r["final"]["byzantine_share_max"] = share
    write_report(rows, tmp_path)
    text = (tmp_path / "report.md").read_text()
    assert "Worst-off honest peer's share of Byzantine neighbours (on the graph, over seeds): 75.0% with 3 Byzantine." in text
    write_report(grid_rows(), tmp_path / "older")  # rows from before the share was recorded: no such line
    assert "share of Byzantine neighbours" not in (tmp_path / "older" / "report.md").read_text()


def chat_row(attack: str, defence: str, perplexity: float, worst: float, **final: float) -> dict:
    r = row(attack, defence, 0, 0.45)
    r["final"].update(honest_perplexity_mean=perplexity, honest_perplexity_max=worst, **final)
    return r


def test_an_instruction_grid_reports_perplexity_its_change_and_the_backdoor_success_rate(tmp_path: Path) -> None:
    rows = [
        chat_row("none", "mean", 16.0, 16.2), chat_row("none", "bristle", 16.4, 16.5),
        chat_row("sign_flip", "mean", 24.0, 30.0), chat_row("sign_flip", "bristle", 16.8, 17.0),
        chat_row("dissensus", "mean", 1.3e21, 7.8e21), chat_row("dissensus", "bristle", 16.4, 16.5),
        chat_row("backdoor", "mean", 16.0, 16.1, backdoor_success_mean=0.75, backdoor_success_max=1.0),
        chat_row("backdoor", "bristle", 16.4, 16.5, backdoor_success_mean=0.0, backdoor_success_max=0.0),
    ]
    write_report(rows, tmp_path, attacks=["none", "sign_flip", "dissensus", "backdoor"], defences=["mean", "bristle"])
    section = (tmp_path / "report.md").read_text().split("## Response perplexity")[1]
    assert table_line(section, "no attack") == "| no attack | 16.00 (16.20) | 16.40 (16.50) |"
    assert table_line(section, "sign_flip") == "| sign_flip | 24.00 (30.00), +50.0 % | 16.80 (17.00), +2.4 % |"
    assert table_line(section, "dissensus") == "| dissensus | 1.30e+21 (7.80e+21), 8.12e+19× | 16.40 (16.50), +0.0 % |"
    assert table_line(section, "backdoor") == (
        "| backdoor | 16.00 (16.10), +0.0 %; backdoor 75.0 % (worst 100.0 %) "
        "| 16.40 (16.50), +0.0 %; backdoor 0.0 % (worst 0.0 %) |"
    )


def test_a_classification_grid_has_no_perplexity_section(tmp_path: Path) -> None:
    write_report(grid_rows(), tmp_path, attacks=["none", "ipm"], defences=["mean", "bristle"])
    assert "## Response perplexity" not in (tmp_path / "report.md").read_text()
