"""`p2pfed experiment`: a resumable grid of simulations (attacks × defences × Byzantine × seeds) and its report."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import click

from p2pfed.cli.options import key_values
from p2pfed.peer.topology import DEFAULT_DEGREE, TOPOLOGIES, fit_degree
from p2pfed.sims.placement import PLACEMENTS


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    if not items:
        raise click.BadParameter("give at least one value (comma-separated)")
    return items


def _numbers(value: str | None, option: str) -> list[int | float] | None:
    items = _split(value)
    if items is None:
        return None
    numbers: list[int | float] = []
    for item in items:
        try:
            numbers.append(int(item))
        except ValueError:
            try:
                numbers.append(float(item))
            except ValueError:
                raise click.BadParameter(f"{item!r} is not a number", param_hint=option) from None
    return numbers


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the grid as Ctrl-C does: workers terminated, results kept


def _parse_params(values: tuple[str, ...], option: str) -> dict[str, dict[str, Any]]:
    """NAME.KEY=VALUE items -> {name: {key: value}} (values as JSON when they parse, else strings)."""
    params: dict[str, dict[str, Any]] = {}
    for item in values:
        name, dot, rest = item.partition(".")
        if not dot or "=" not in rest or "=" in name:
            raise click.BadParameter(f"expected NAME.KEY=VALUE (e.g. alie.z=4), got {item!r}", param_hint=option)
        params.setdefault(name.strip(), {}).update(key_values((rest,), option))
    return params


@click.command()
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TOML file with a [base] table (simulation settings) and a [grid] table "
                   "(attacks, defences, byzantine, seeds, workers, attack_params, defence_params). "
                   "Flags override it.")
@click.option("--attacks", metavar="A,B,...",
              help="Attacks to run; 'none' is the attack-free baseline, 'all' = every registered attack. "
                   "[default: none + all]")
@click.option("--defences", metavar="D,E,...", help="Defences to compare; 'all' = every registered one. [default: all]")
@click.option("--byzantine", metavar="N,...",
              help="Byzantine peers per attacked cell: counts (5) or fractions of the peers (0.25). [default: 5]")
@click.option("--seeds", metavar="S,...", help="Seeds; each is a full repetition of the grid. [default: 0]")
@click.option("--workers", type=int, help="Parallel worker processes. [default: one per core]")
@click.option("--peers", type=int, help="Peers per simulation. [default: 16]")
@click.option("--rounds", type=int, help="Communication rounds.")
@click.option("--local-steps", "-K", type=int, help="K: local SAM steps per round.")
@click.option("--gossip-steps", "-Q", type=int, help="Q: gossip steps per round.")
@click.option("--rho", type=float, help="SAM radius.")
@click.option("--lr", type=float, help="Local learning rate.")
@click.option("--topology", type=click.Choice(TOPOLOGIES), help="Communication graph.")
@click.option("--degree", type=int,
              help=f"Neighbours per peer (regular, small-world). [default: {DEFAULT_DEGREE}, or peers-1 on "
                   f"fewer than {DEFAULT_DEGREE + 1} peers]")
@click.option("--placement", type=click.Choice(PLACEMENTS),
              help="Where the Byzantine peers sit on the graph: random (drawn from the seed), or eclipse "
                   "(around honest victims, all but one of each victim's neighbours Byzantine; see "
                   "`p2pfed sim --help`). [default: random]")
@click.option("--membership", type=click.Choice(["static", "sampling"]),
              help="static: every cell keeps its drawn graph; sampling: peers rewire it from their defence's "
                   "evidence (see `p2pfed sim --help`). A defence named NAME+sampling (e.g. bristle+sampling) "
                   "samples whatever this says, so one grid compares both. [default: static]")
@click.option("--preset", type=click.Choice(["sparse"]),
              help="A ready grid; flags and --config override it. sparse: 64 peers, degree 6, 21 Byzantine, "
                   "trec, Dirichlet 0.5, 12 rounds, every attack, defences mean, clipped_gossip, bristle, "
                   "bristle+sampling, oracle (run it with --placement random and --placement eclipse).")
@click.option("--partition", type=click.Choice(["iid", "dirichlet", "k-classes"]), help="Data split over peers.")
@click.option("--alpha", type=float, help="Dirichlet concentration; smaller = more non-IID.")
@click.option("--model", help="'minilm', 'smollm2' or a local HuggingFace model directory.")
@click.option("--task", help="'trec', 'sms-spam', 'chatterbot' (with --model smollm2) or a .jsonl data file. [default: trec]")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any other [base] setting, e.g. --set val_fraction=0.2 --set lora_rank=4 (repeatable).")
@click.option("--attack-param", "attack_params", multiple=True, metavar="ATTACK.KEY=VALUE",
              help="A parameter of one attack in every cell, e.g. --attack-param alie.z=4 (repeatable).")
@click.option("--defence-param", "defence_params", multiple=True, metavar="DEFENCE.KEY=VALUE",
              help="A parameter of one defence, e.g. --defence-param trimmed_mean.trim=0.2 (repeatable).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Report directory. If it holds an experiment.toml from an earlier run, that is the grid "
                   "(flags override it), so `--out DIR` alone resumes DIR. [default: "
                   "runs/experiment-<hash of the grid>, so rerunning the same command resumes it]")
@click.option("--keep-runs", is_flag=True, help="Also keep each cell's run directory under OUT/runs/<cell id>/.")
@click.option("--list", "list_only", is_flag=True, help="Print the cells (done or to do) and exit.")
@click.option("--ray", "ray_address", metavar="ADDRESS|auto", default=None,
              help="Run the cells as Ray tasks (one CPU each) on the cluster at ADDRESS (HEAD_IP:6379 from "
                   "`ray start --head`), or 'auto': the cluster this machine is in, else a new local one. "
                   "--workers is then the cluster's CPUs; results.jsonl resumes the same way. "
                   "Needs the extra: pip install 'p2pfed[ray]'.")
@click.option("--report-only", is_flag=True, help="Rewrite the report from OUT/results.jsonl without running.")
def experiment(
    config_file: Path | None, attacks: str | None, defences: str | None, byzantine: str | None,
    seeds: str | None, workers: int | None, peers: int | None, rounds: int | None, local_steps: int | None,
    gossip_steps: int | None, rho: float | None, lr: float | None, topology: str | None, degree: int | None,
    placement: str | None, membership: str | None, preset: str | None, partition: str | None, alpha: float | None, model: str | None, task: str | None,
    settings: tuple[str, ...], attack_params: tuple[str, ...], defence_params: tuple[str, ...], out: Path | None, keep_runs: bool, list_only: bool, report_only: bool,
    ray_address: str | None,
) -> None:
    """Run a grid of simulations and write a report comparing defences under attacks.

    Every cell is one `p2pfed sim` (by default 16 peers on TREC, complete graph) with one attack, one
    defence, one Byzantine count and one seed; the attack-free baseline ('none') runs once per defence with no
    Byzantine peer. Cells run in parallel processes, each loading the base model once. Each finished cell
    is appended to OUT/results.jsonl, so an interrupted grid resumes where it stopped: rerun the same
    command. OUT then holds report.md (final honest accuracy, mean ± sd, best defence per attack in bold,
    drop vs no attack), heatmap.png, curves/<attack>.png and experiment.toml (reusable with --config).

    \b
    Examples:
      p2pfed experiment                                   (the full default grid: ~36 min on 2 cores)
      p2pfed experiment --attacks none,ipm,alie --defences mean,bristle --seeds 0,1
      p2pfed experiment --attacks alie --defences mean,bristle --attack-param alie.z=4
      p2pfed experiment --config grid.toml --workers 2 --out runs/my-grid
      p2pfed experiment --list                            (what would run, and what is done)
      p2pfed experiment --model smollm2 --task chatterbot --peers 9 --byzantine 3 --rounds 3 \
          --defences mean,bristle                         (chat data: its attacks, perplexity table)
    """
    from p2pfed.sims.experiment import (
        attack_names,
        default_base,
        experiment_from_mapping,
        read_toml,
    )
    from p2pfed.sims.grid_runner import CONFIG, RESULTS, run_grid
    from p2pfed.sims.report import ATTACK_FREE, load_results, write_report

    if ray_address is not None:
        from p2pfed.sims.ray_cluster import require_ray

        require_ray()  # before anything else: say how to install it
    if config_file is None and out is not None and (out / CONFIG).exists():
        config_file = out / CONFIG  # the directory remembers its grid: `--out DIR` alone resumes it
        click.echo(f"using {config_file} (this directory's grid; flags override it)")
    data = read_toml(config_file) if config_file else {}
    source = str(config_file) if config_file else "command line"
    if preset is not None:
        from p2pfed.sims.experiment import PRESETS

        chosen = PRESETS[preset]
        data = {**data, "base": {**chosen["base"], **data.get("base", {})},
                "grid": {**chosen["grid"], **data.get("grid", {})}}
    base = dict(data.get("base", {}))
    flags = {
        "peers": peers, "rounds": rounds, "local_steps": local_steps, "gossip_steps": gossip_steps, "rho": rho,
        "lr": lr, "topology": topology, "degree": degree, "placement": placement, "membership": membership,
        "partition": partition,
        "alpha": alpha, "model": model, "task": task,
    }
    base.update({k: v for k, v in flags.items() if v is not None})
    base.update(key_values(settings, "--set"))
    n = base.get("peers", default_base().peers)
    few = fit_degree(n) if isinstance(n, int) and n >= 2 else DEFAULT_DEGREE
    if "degree" not in base and few < DEFAULT_DEGREE:  # the default degree, fitted to a few peers
        base["degree"] = few
        if base.get("topology", default_base().topology) in ("regular", "small-world"):
            click.echo(f"note: {few + 1} peers: degree {few} (every peer linked to every other) instead of "
                       f"the default {DEFAULT_DEGREE}")
    grid = dict(data.get("grid", {}))
    axes = {
        "attacks": _split(attacks), "defences": _split(defences), "byzantine": _numbers(byzantine, "--byzantine"),
        "seeds": _numbers(seeds, "--seeds"), "workers": workers,
    }
    grid.update({k: v for k, v in axes.items() if v is not None})
    if "attacks" not in grid and _instruction_task(str(base.get("task", default_base().learn.run.task))):
        grid["attacks"] = (ATTACK_FREE, *attack_names("instruction"))  # the attacks that fit chat data
    for table, values, option in (("attack_params", attack_params, "--attack-param"),
                                  ("defence_params", defence_params, "--defence-param")):
        for name, params in _parse_params(values, option).items():
            grid[table] = {**grid.get(table, {}), name: {**grid.get(table, {}).get(name, {}), **params}}
    cfg = experiment_from_mapping({**data, "base": base, "grid": grid}, source=source)
    cells = cfg.cells()
    out = out or Path("runs") / f"experiment-{cfg.digest()}"

    if report_only:
        ids = {c.id for c in cells}
        rows = [r for r in load_results(out / RESULTS) if r["id"] in ids]
        if not rows:
            raise click.ClickException(f"no results for this grid in {out / RESULTS}; run it first")
        config_text = (out / CONFIG).read_text() if (out / CONFIG).exists() else None
        write_report(rows, out, attacks=cfg.grid.attacks, defences=cfg.grid.defences, config_toml=config_text)
        click.echo(f"report: {out / 'report.md'}  ({len(rows)} of {len(cells)} cells)")
        return
    if list_only:
        done = {r["id"]: r.get("status") for r in load_results(out / RESULTS)}
        for cell in cells:
            click.echo(f"{cell.id}  {done.get(cell.id, 'to do'):>6}  {cell.label}")
        todo = sum(1 for c in cells if done.get(c.id) != "ok")
        click.echo(f"{len(cells)} cells, {todo} to run -> {out}")
        return

    base_cfg = cfg.base
    click.echo(
        f"p2pfed experiment: {len(cfg.grid.attacks)} attacks × {len(cfg.grid.defences)} defences × "
        f"byzantine {list(cfg.grid.byzantine)} × seeds {list(cfg.grid.seeds)} = {len(cells)} cells of "
        f"{base_cfg.peers} peers, {base_cfg.gossip.rounds} rounds on {base_cfg.learn.run.task} -> {out}"
    )
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        result = run_grid(cfg, out, keep_runs=keep_runs, ray_address=ray_address)
    except KeyboardInterrupt:
        click.echo(
            f"\ninterrupted; finished cells are saved in {out / RESULTS}. To resume, rerun the same command "
            f"or `p2pfed experiment --out {out}`; add --report-only for a report of the cells done.",
            err=True,
        )
        raise SystemExit(130) from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    click.echo(
        f"{result.ran} cells run, {result.skipped} already done, {result.failed} failed"
        f" in {result.wall_seconds:.0f} s"
    )
    if result.failed:
        click.echo(f"failed cells are listed in {out / 'report.md'}; rerun the same command to retry them.")
    click.echo(f"report: {out / 'report.md'}  (heatmap.png, curves/, results.jsonl)")


commands = [experiment]


def _instruction_task(task: str) -> bool:
    """Whether `task` holds instruction rows (chat data), read from the task itself."""
    from p2pfed.learn.data import load_task

    return load_task(task).kind == "instruction"
