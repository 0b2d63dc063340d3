"""`p2pfed sim`: a multi-peer simulation in one process, on the same `Peer` code as the daemon."""

from __future__ import annotations

import time
from pathlib import Path

import click
from tqdm import tqdm

from p2pfed.cli.options import key_values
from p2pfed.config import LORA_MODES, LR_SCHEDULES, MAX_NEIGHBOURS, GossipConfig, RunManifest
from p2pfed.learn import LearnConfig
from p2pfed.learn.config import OPTIMIZERS
from p2pfed.peer.topology import DEFAULT_DEGREE, TOPOLOGIES, fit_degree
from p2pfed.robust.registry import DEFAULT_DEFENCE
from p2pfed.sims.placement import PLACEMENTS


@click.command()
@click.option("--peers", default=10, show_default=True, help="Number of peers in the network.")
@click.option("--rounds", default=GossipConfig.rounds, show_default=True, help="Communication rounds.")
@click.option("--local-steps", "-K", default=GossipConfig.local_steps, show_default=True,
              help="K: local SAM steps per round on each peer's own data.")
@click.option("--gossip-steps", "-Q", default=GossipConfig.gossip_steps, show_default=True,
              help="Q: gossip (mixing) steps per round; DFedSAM-MGS uses Q>1, D-PSGD Q=1.")
@click.option("--rho", default=GossipConfig.rho, show_default=True,
              help="SAM radius ρ; 0 turns SAM off (plain local SGD/Adam, i.e. D-PSGD).")
@click.option("--lr", default=GossipConfig.lr, show_default=True, help="Local learning rate.")
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=LearnConfig.optimizer, show_default=True,
              help="Local optimizer: adam (fresh state every round) or sgd (plain SGD, as in DFedSAM).")
@click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), default=GossipConfig.lr_schedule, show_default=True,
              help="How --lr changes over the rounds: constant, or cosine down to --lr-final·lr at the last "
                   "round (the last rounds' local drift then stays small on non-IID data).")
@click.option("--lr-final", default=GossipConfig.lr_final, show_default=True,
              help="With --lr-schedule cosine: the last round's lr as a fraction of --lr.")
@click.option("--restore-update", default=GossipConfig.restore_update, show_default=True,
              help="After the gossip steps, stretch the round's move back toward the length of this peer's own "
                   "local update, at most this many times (non-IID updates cancel in the mix); 1 = off.")
@click.option("--logit-adjust", default=GossipConfig.logit_adjust, show_default=True,
              help="τ: train on logits + τ·log(local label frequencies), so a skewed shard does not push "
                   "down the classes it lacks (non-IID); 0 = plain cross-entropy.")
@click.option("--step-timeout", default=GossipConfig.step_timeout, show_default=True,
              help="Seconds a peer waits for its neighbours in one gossip step; an update later than that is "
                   "'missing' from the step's mix, so two runs of a seed agree exactly only if no step timed out.")
@click.option("--topology", type=click.Choice(TOPOLOGIES), default="regular", show_default=True,
              help="Communication graph.")
@click.option("--degree", type=int, default=None,
              help=f"Neighbours per peer (regular, small-world). [default: {DEFAULT_DEGREE}, or peers-1 "
                   f"(a complete graph) on fewer than {DEFAULT_DEGREE + 1} peers]")
@click.option("--edge-probability", default=0.3, show_default=True, help="Edge probability (erdos-renyi).")
@click.option("--partition", type=click.Choice(["iid", "dirichlet", "k-classes"]), default="dirichlet",
              show_default=True, help="How the data is split over peers.")
@click.option("--alpha", default=0.5, show_default=True,
              help="Dirichlet concentration: smaller = more non-IID.")
@click.option("--classes-per-peer", default=2, show_default=True, help="Classes per peer (k-classes).")
@click.option("--model", default=RunManifest.model, show_default=True,
              help="'minilm', 'smollm2', or the path of a local HuggingFace model directory.")
@click.option("--task", default=RunManifest.task, show_default=True,
              help="Built-in task: 'sms-spam', 'trec' (classification) or 'chatterbot' (instruction data: "
                   "chat Q/A pairs in 21 topics, with --model smollm2).")
@click.option("--data", "data_file", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help='A .jsonl file of {"text","label"} rows, or of {"prompt","response"} / {"messages": [...]} '
                   'chat rows (with --model smollm2), instead of --task.')
@click.option("--lora-mode", type=click.Choice(LORA_MODES), default=RunManifest.lora_mode, show_default=True,
              help="shared-a: A frozen and shared from the seed, train B (exact averaging); full: train A and B.")
@click.option("--lora-rank", default=RunManifest.lora_rank, show_default=True)
@click.option("--adapt-layers", default=RunManifest.adapt_layers, show_default=True,
              help="LoRA on the top N transformer layers; lower layers are frozen and computed once.")
@click.option("--byzantine", default=0, show_default=True, help="How many peers are Byzantine.")
@click.option("--placement", type=click.Choice(PLACEMENTS), default="random", show_default=True,
              help="Where the Byzantine peers sit on the graph. random: drawn from the seed; eclipse: around "
                   "honest victims (drawn from the seed, as many as --byzantine allows), all but one of each "
                   "victim's neighbours Byzantine. The run's summary lists the victims.")
@click.option("--membership", type=click.Choice(["static", "sampling"]), default="static", show_default=True,
              help="static: the drawn graph for the whole run; sampling: each peer rewires it between rounds "
                   "as `join` does (evicts neighbours its defence quarantined, at most 2 a round, refuses "
                   "them for 10 rounds, dials uniformly sampled candidates from peer exchange). Memory "
                   "transport only.")
@click.option("--attack", default="none", show_default=True,
              help="Behaviour of the Byzantine peers: a built-in name or 'module:Class'.")
@click.option("--attack-param", multiple=True, metavar="KEY=VALUE", help="Parameter of the attack (repeatable).")
@click.option("--defence", default=DEFAULT_DEFENCE, show_default=True,
              help="Aggregation rule of honest peers: a built-in name or 'module:Class'.")
@click.option("--defence-param", multiple=True, metavar="KEY=VALUE", help="Parameter of the defence (repeatable).")
@click.option("--drop", default=0.0, show_default=True, help="Probability that a message is lost.")
@click.option("--seed", default=RunManifest.seed, show_default=True, help="Run seed: data split, topology, adapters, attacks.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run directory (default: runs/sim-<time>).")
@click.option("--no-adapters", is_flag=True, help="Do not write each peer's final adapter.")
@click.option("--transport", type=click.Choice(["memory", "libp2p"]), default="memory", show_default=True,
              help="memory: in-process channels; libp2p: a real host per peer on 127.0.0.1.")
@click.option("--processes", is_flag=True,
              help="With --transport libp2p: one `p2pfed join` OS process per peer; "
                   f"they link as join does (each to every peer it finds, up to {MAX_NEIGHBOURS}), not by --topology, "
                   "and evict neighbours on their own evidence. --byzantine peers run `join --attack` with a "
                   "model-level attack that needs no colluders (sign_flip, gaussian, free_rider, replay, ...).")
@click.option("--eval-sample", default=0, show_default=True, metavar="ROWS",
              help="Test rows each peer is scored on after a round (the last round: the full test set). "
                   "0: the full set up to 64 peers, 200 rows above.")
@click.option("--per-peer", is_flag=True,
              help="Train and evaluate each peer on its own, in turn, instead of all waiting peers in one "
                   "stacked computation (slower; the same results to float rounding).")
@click.option("--ray", "ray_address", metavar="ADDRESS|auto", default=None,
              help="Spread the peers over Ray actors (one frozen base model and a batch of peers each) on the "
                   "cluster at ADDRESS (HEAD_IP:6379 from `ray start --head`), or 'auto': the cluster this "
                   "machine is in, else a new local one. Needs the extra: pip install 'p2pfed[ray]'.")
@click.option("--ray-actors", type=int, default=None,
              help="With --ray: how many actors. [default: one per CPU of the cluster]")
@click.option("--churn", default=0.0, show_default=True,
              help="With --processes: the probability, per peer and round, that the peer is SIGKILLed during "
                   "its next round and restarted from its checkpoint (a churn soak; the last 2 rounds are calm).")
def sim(
    peers: int, rounds: int, local_steps: int, gossip_steps: int, rho: float, lr: float, optimizer: str, lr_schedule: str,
    lr_final: float, restore_update: float, logit_adjust: float, step_timeout: float,
    topology: str, degree: int | None, edge_probability: float, partition: str, alpha: float, classes_per_peer: int, model: str,
    task: str, data_file: Path | None, lora_mode: str, lora_rank: int, adapt_layers: int, byzantine: int,
    placement: str, membership: str, attack: str, attack_param: tuple[str, ...], defence: str, defence_param: tuple[str, ...], drop: float,
    seed: int, out: Path | None, no_adapters: bool, transport: str, processes: bool, eval_sample: int,
    per_peer: bool, ray_address: str | None, ray_actors: int | None, churn: float,
) -> None:
    """Simulate a p2pfed network of N peers in this process.

    Every peer runs the real Peer round loop (signed envelopes, verification, defence, reputation) over an
    in-memory transport; all peers share one frozen base model, each keeps only its adapter. Writes
    config.json, metrics.jsonl, summary.json, reputation.json, accuracy.png and adapters/peer-NN/
    (peft adapter directories) to --out.
    """
    from p2pfed.sims.simulate import SimConfig, placement_of, run_simulation, validate

    if ray_address is not None:
        _check_ray_options(transport, processes, drop)
    if churn and not processes:
        raise click.BadParameter("--churn kills and restarts `p2pfed join` processes: add --transport libp2p "
                                 "--processes", param_hint="--churn")
    if processes:
        if transport != "libp2p":
            raise click.BadParameter("--processes needs --transport libp2p")
        if placement != "random":
            raise click.BadParameter(
                "--processes peers choose their own neighbours, so there is no graph to place Byzantine "
                "peers on: drop --processes or --placement",
                param_hint="--placement",
            )
        explicit = click.get_current_context().get_parameter_source("topology")
        if topology != "complete" and explicit is click.core.ParameterSource.COMMANDLINE:
            raise click.BadParameter(
                f"--processes peers find each other as `p2pfed join` does (peer exchange, up to {MAX_NEIGHBOURS} "
                "neighbours each), so --topology only applies in one process: drop --processes, or "
                "use --topology complete",
                param_hint="--topology",
            )

    if degree is None:
        degree = fit_degree(peers)
        if degree < DEFAULT_DEGREE and topology in ("regular", "small-world"):
            click.echo(f"note: {peers} peers: --degree {degree} (every peer linked to every other) instead of "
                       f"the default {DEFAULT_DEGREE}")
    cfg = SimConfig(
        peers=peers,
        topology=topology,
        degree=degree,
        edge_probability=edge_probability,
        partition=partition,
        alpha=alpha,
        classes_per_peer=classes_per_peer,
        byzantine=byzantine,
        placement=placement,
        membership=membership,
        attack=attack,
        attack_params=key_values(attack_param, "--attack-param"),
        defence=defence,
        defence_params=key_values(defence_param, "--defence-param"),
        drop=drop,
        save_adapters=not no_adapters,
        batched=not per_peer,
        eval_sample=eval_sample,
        gossip=GossipConfig(
            rounds=rounds, local_steps=local_steps, gossip_steps=gossip_steps, rho=rho, lr=lr,
            lr_schedule=lr_schedule, lr_final=lr_final, restore_update=restore_update, logit_adjust=logit_adjust,
            step_timeout=step_timeout,
        ),
        learn=LearnConfig(
            run=RunManifest(
                model=model,
                task=str(data_file) if data_file else task,
                lora_mode=lora_mode,
                lora_rank=lora_rank,
                adapt_layers=adapt_layers,
                seed=seed,
            ),
            optimizer=optimizer,
        ),
    )
    validate(cfg)
    if placement == "eclipse":
        chosen = placement_of(cfg)
        click.echo(f"eclipse placement: Byzantine peers {chosen.byzantine} surround honest peers "
                   f"{chosen.victims or '(none: too few Byzantine peers for any neighbourhood)'}")
    out = out or Path("runs") / time.strftime("sim-%Y%m%d-%H%M%S")
    click.echo(f"p2pfed sim: {peers} peers, {rounds} rounds, K={local_steps}, Q={gossip_steps}, rho={rho} "
               f"on {cfg.learn.run.task} with {model} over {transport}{' processes' if processes else ''} -> {out}")
    if processes:
        click.echo("--processes: every peer is a `p2pfed join` process and links to every other it "
                   f"finds (up to {MAX_NEIGHBOURS}); --topology applies to simulations in one process only")
        from p2pfed.sims.processes import run_processes

        summary = run_processes(cfg, out, churn=churn).summary
        _print_table(summary)
        if "churn" in summary:
            _print_churn(summary)
        click.echo(f"run directory: {out}  (metrics.jsonl, summary.json, peer-NN/ node directories)")
        return
    # smoothing=0: the ETA from the mean rate since the start; a batched round finishes all its peers at
    # once, and the default (recent rate) extrapolated the first peer of a round to hours
    bar = tqdm(total=peers * rounds, unit="peer-round", desc="simulating", dynamic_ncols=True, smoothing=0)

    def progress(done: int, total: int, status: str) -> None:
        bar.update(done - bar.n)
        if status:
            bar.set_postfix_str(status)

    from p2pfed.learn import TaskModel

    model_obj = TaskModel.load(cfg.learn, progress=lambda message: bar.set_description_str(message))
    bar.set_description_str("simulating")
    if ray_address is not None:
        from p2pfed.sims.ray_sim import run_on_ray

        bar.set_description_str(f"simulating on Ray ({ray_address})")
        result = run_on_ray(cfg, ray_address, out=out, model=model_obj, progress=progress, actors=ray_actors)
    else:
        result = run_simulation(cfg, out=out, model=model_obj, progress=progress, transport=transport)
    bar.close()
    _print_table(result.summary)
    samples = ", samples.jsonl" if result.summary.get("base_model") else ""
    click.echo(f"run directory: {out}  (accuracy.png, metrics.jsonl, summary.json, adapters/{samples})")


def _check_ray_options(transport: str, processes: bool, drop: float) -> None:
    """--ray runs the in-process memory simulation's peers on Ray actors: fail early on what it cannot do."""
    from p2pfed.sims.ray_cluster import require_ray

    if transport != "memory" or processes:
        raise click.BadParameter("--ray spreads the in-memory simulation over Ray actors: drop --transport "
                                 "and --processes", param_hint="--ray")
    if drop:
        raise click.BadParameter("--drop is simulated by the in-process memory transport only: drop --ray or "
                                 "--drop", param_hint="--drop")
    require_ray()


def _print_churn(summary: dict) -> None:  # type: ignore[type-arg]
    churn, final = summary["churn"], summary["final"]
    click.echo(
        f"churn {churn['rate']}: {churn['kills']} SIGKILLs of peers {churn['killed_peers']}; "
        f"{churn['checkpoints_checked_after_kill']} checkpoints checked after a kill, "
        f"{len(churn['corrupt_checkpoints'])} corrupt; slowest round {churn['slowest_round_seconds']:.1f} s "
        f"(peer {churn['slowest_round_peer']}); final consensus distance {final['consensus_distance']:.3e}, "
        f"worst peer {final['consensus_distance_max']:.3e}"
    )


def _print_table(summary: dict) -> None:  # type: ignore[type-arg]
    click.echo("")
    click.echo(f"{'round':>5}  {'honest acc mean':>15}  {'sd':>6}  {'min':>6}  {'consensus dist':>14}")
    for row in summary["curve"]:
        click.echo(
            f"{row['round'] + 1:>5}  {row['honest_accuracy_mean']:>15.4f}  {row['honest_accuracy_std']:>6.4f}"
            f"  {row['honest_accuracy_min']:>6.4f}  {row['consensus_distance']:>14.3e}"
        )
    final = summary["final"]
    if summary.get("base_model"):
        _print_language(summary)
    if summary["byzantine_peers"]:
        click.echo(f"Byzantine peers (excluded above): {summary['byzantine_peers']} ({summary['attack']})")
        if final.get("byzantine_share_max") is not None:
            click.echo(f"worst-off honest peer: {final['byzantine_share_max']:.0%} of its neighbours Byzantine "
                       f"(peer {final['byzantine_share_max_peer']})")
        if final.get("backdoor_success_mean") is not None:
            click.echo(f"backdoor success on {final['backdoor_prompts']} triggered test prompts: "
                       f"{final['backdoor_success_mean']:.0%} mean, {final['backdoor_success_max']:.0%} worst honest "
                       f"peer (base model {final['backdoor_success_base']:.0%})")
        if summary.get("placement") == "eclipse":
            click.echo(f"eclipse victims (one honest neighbour left): {summary['eclipse_victims'] or 'none'}")
        hoods = summary.get("neighbourhoods", {})
        if summary.get("membership") == "sampling":
            first = hoods.get("victims_honest_majority_round")
            if summary.get("eclipse_victims"):
                kept = "and kept it" if hoods.get("victims_keep_majority") else "but lost it again"
                click.echo(f"every victim had an honest majority of neighbours from round {first + 1} {kept}"
                           if first is not None else "some victim never had an honest majority of neighbours")
            click.echo(f"rewires (evictions) per honest peer per round: mean {hoods['rewires_per_peer_round_mean']:.2f}, "
                       f"max {hoods['rewires_per_peer_round_max']}")
        if "honest_peers_with_byzantine_neighbours" in hoods:  # --processes: join's own membership
            left = hoods["honest_peers_with_byzantine_neighbours"]
            click.echo(f"honest peers that finished with a Byzantine neighbour: {left or 'none'}")
    click.echo(
        f"final honest accuracy {final['honest_accuracy_mean']:.4f} ± {final['honest_accuracy_std']:.4f}"
        f", worst honest peer {final['honest_accuracy_min']:.4f}  in {summary['wall_seconds']:.0f} s"
    )
    baseline = final.get("majority_baseline")
    if baseline is not None and final["honest_accuracy_min"] < baseline:
        click.echo(
            f"warning: an honest peer ends below the majority-class baseline ({baseline:.4f}, always answering"
            " the most common class); see metrics.jsonl for which"
        )


def _print_language(summary: dict) -> None:  # type: ignore[type-arg]
    """Instruction data: held-out response perplexity of the base model and after every round."""
    base = summary["base_model"]
    click.echo("")
    click.echo("held-out response perplexity (accuracy above is next-token accuracy on the answers):")
    click.echo(f"{'round':>5}  {'honest mean':>11}  {'worst honest':>12}")
    click.echo(f"{'base':>5}  {base['perplexity']:>11.2f}  {base['perplexity']:>12.2f}")
    for row in summary["curve"]:
        click.echo(f"{row['round'] + 1:>5}  {row['honest_perplexity_mean']:>11.2f}  {row['honest_perplexity_max']:>12.2f}")
    last = summary["curve"][-1]["honest_perplexity_mean"] if summary["curve"] else base["perplexity"]
    click.echo(f"perplexity {base['perplexity']:.2f} (base) -> {last:.2f} ({last / base['perplexity'] - 1:+.0%})")
