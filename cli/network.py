"""`p2pfed keygen | init | join | status`: run one peer of a live network over libp2p."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import click

from p2pfed.cli.options import key_values
from p2pfed.config import LINGER_S, LORA_MODES, MAX_NEIGHBOURS, GossipConfig, RunManifest

DEFAULT_OUT = Path("p2pfed-node")


@click.command()
@click.option("--out", "path", type=click.Path(dir_okay=False, path_type=Path),
              default=DEFAULT_OUT / "identity.key", show_default=True, help="Where to write the key.")
@click.option("--force", is_flag=True, help="Overwrite an existing key file.")
def keygen(path: Path, force: bool) -> None:
    """Create an Ed25519 identity (libp2p key file, mode 0600) and print its peer ID."""
    from p2pfed.errors import ConfigError
    from p2pfed.wire import Identity

    if path.exists() and not force:
        raise ConfigError(f"{path} exists (peer {Identity.load(path).peer_id}); use --force to replace it")
    identity = Identity.generate()
    identity.save(path)
    click.echo(identity.peer_id)


@click.command()
@click.argument("run_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--model", default=RunManifest.model, show_default=True,
              help="'minilm', 'smollm2' or a local HF model directory; its content hash is pinned.")
@click.option("--task", default=RunManifest.task, show_default=True,
              help="Built-in task ('sms-spam', 'trec'), a .jsonl file (labels read from it), or a name with --labels.")
@click.option("--labels", default="", help="Comma-separated class names, in index order (custom tasks).")
@click.option("--lora-mode", type=click.Choice(LORA_MODES), default=RunManifest.lora_mode, show_default=True)
@click.option("--lora-rank", default=RunManifest.lora_rank, show_default=True)
@click.option("--lora-alpha", default=RunManifest.lora_alpha, show_default=True)
@click.option("--adapt-layers", default=RunManifest.adapt_layers, show_default=True,
              help="LoRA on the top N transformer layers.")
@click.option("--max-tokens", default=RunManifest.max_tokens, show_default=True)
@click.option("--seed", default=RunManifest.seed, show_default=True, help="Shared seed: frozen A and the initial head.")
@click.option("--gossip-steps", "-Q", default=RunManifest.gossip_steps, show_default=True,
              help="Q: gossip (mixing) steps per round; part of the run contract.")
@click.option("--round-window", default=RunManifest.round_window, show_default=True,
              help="Accept updates up to this many rounds from ours; part of the run contract.")
@click.option("--rounds", default=GossipConfig.rounds, show_default=True)
@click.option("--local-steps", "-K", default=GossipConfig.local_steps, show_default=True)
@click.option("--rho", default=GossipConfig.rho, show_default=True)
@click.option("--lr", default=GossipConfig.lr, show_default=True)
@click.option("--step-timeout", default=GossipConfig.step_timeout, show_default=True,
              help="Seconds a peer waits for its neighbours in one gossip step.")
@click.option("--force", is_flag=True, help="Overwrite an existing run file.")
def init(run_file: Path, model: str, task: str, labels: str, lora_mode: str, lora_rank: int, lora_alpha: float,
         adapt_layers: int, max_tokens: int, seed: int, gossip_steps: int, round_window: int, rounds: int,
         local_steps: int, rho: float, lr: float, step_timeout: float, force: bool) -> None:
    """Write a run file: the [run] contract (base model + content hash, task/labels, LoRA, seed, Q, round
    window, protocol version) and the [gossip] schedule.

    Every peer of the run joins with the same file; the contract's digest names the run's topic and is
    signed into every update. The [gossip] table holds the schedule peers should share (join options may
    override it).
    """
    from p2pfed.daemon.runfile import RunFile, create_manifest
    from p2pfed.errors import ConfigError

    if run_file.exists() and not force:
        raise ConfigError(f"{run_file} exists; use --force to replace it")
    manifest = create_manifest(RunManifest(
        model=model, task=task, labels=tuple(x.strip() for x in labels.split(",") if x.strip()),
        lora_mode=lora_mode, lora_rank=lora_rank, lora_alpha=lora_alpha, adapt_layers=adapt_layers,
        max_tokens=max_tokens, seed=seed, gossip_steps=gossip_steps, round_window=round_window,
    ))
    gossip = GossipConfig(rounds=rounds, local_steps=local_steps, rho=rho, lr=lr, step_timeout=step_timeout)
    RunFile(manifest, gossip).save(run_file)
    click.echo(f"{run_file}: topic {manifest.topic} · {manifest.model} ({manifest.base_hash[:12]}…) · "
               f"{manifest.task} {list(manifest.labels)} · seed {manifest.seed} · Q={manifest.gossip_steps}")


@click.command()
@click.option("--run", "run_file", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The run file (from `p2pfed init`).")
@click.option("--data", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help='Your private data: .jsonl of {"text","label"} rows, or of {"prompt","response"} / '
                   '{"messages": [...]} rows for an instruction run (an `init --task` without labels).')
@click.option("--eval", "eval_data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Evaluation rows (.jsonl); default: a held-out part of --data.")
@click.option("--listen", multiple=True, default=["/ip4/0.0.0.0/tcp/4001"], show_default=True,
              help="Listen multiaddr (repeatable); tcp/0 picks a free port.")
@click.option("--bootstrap", multiple=True, help="/ip4/.../tcp/.../p2p/<peer ID> of a running p2pfed peer, of this run or (with the DHT) any other (repeatable).")
@click.option("--announce", multiple=True,
              help="Address other peers should dial, e.g. /ip4/<public IP>/tcp/4001 (repeatable); "
                   "needed when listening on 0.0.0.0 behind a known public address.")
@click.option("--mdns", is_flag=True, help="Also discover peers of the run on the local network.")
@click.option("--dht/--no-dht", default=True, show_default=True,
              help="Find the run's peers through the Kademlia DHT: --bootstrap may then be any p2pfed "
                   "peer, even one of another run.")
@click.option("--private", is_flag=True,
              help="This host is behind NAT (others cannot dial it): reserve a slot on a relay peer, "
                   "announce the relayed address, and try DCUtR hole punching to reach peers directly.")
@click.option("--autonat/--no-autonat", default=True, show_default=True,
              help="Ask connected peers to dial this host back (AutoNAT). If none of them can, act as "
                   "--private from then on. status.json's \"reachability\" gives the verdict.")
@click.option("--relay-service/--no-relay-service", default=None,
              help="Relay circuits for peers behind NAT (circuit relay v2, within resource limits). "
                   "Default: on, unless --private.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT, show_default=True,
              help="Node directory: checkpoint, metrics.jsonl, status.json, adapter/, node.log.")
@click.option("--key", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Identity file (default: <out>/identity.key, created if missing).")
@click.option("--rounds", type=int, default=None, help="Override the run file's rounds.")
@click.option("--local-steps", "-K", type=int, default=None, help="Override K.")
@click.option("--step-timeout", type=float, default=None,
              help="Seconds to wait for neighbours per gossip step (a dead peer costs this much).")
@click.option("--defence", default=None, help="Aggregation rule (default: bristle).")
@click.option("--defence-param", multiple=True, metavar="KEY=VALUE")
@click.option("--max-neighbours", default=MAX_NEIGHBOURS, show_default=True)
@click.option("--min-neighbours", default=1, show_default=True, help="Neighbours to wait for before round 1.")
@click.option("--wait", "neighbour_wait", default=600.0, show_default=True,
              help="Seconds to wait for --min-neighbours before giving up; also the longest a round waits "
                   "after one in which no neighbour's update arrived (they have not started, or are cut off).")
@click.option("--linger", default=LINGER_S, show_default=True,
              help="After the last round, stay up at most this many seconds while a neighbour is still "
                   "behind (restarted late, say), sending it the last round's updates so that it can finish. "
                   "Exits at once when nobody is behind.")
@click.option("--eval-size", default=200, show_default=True, help="Held-out evaluation rows without --eval.")
@click.option("--threads", default=0, show_default=True, help="torch threads (0: torch's default).")
@click.option("--metrics", "metrics_addr", default=None, metavar="HOST:PORT",
              help="Serve Prometheus metrics at http://HOST:PORT/metrics, e.g. 127.0.0.1:9100.")
@click.option("--index", type=int, default=None, hidden=True,
              help="Seed stream of this peer (simulations: the peer's number); default from the peer ID.")
@click.option("--attack", default=None, hidden=True,
              help="Simulations only (`p2pfed sim --processes --byzantine N`): make this peer Byzantine with a "
                   "model-level attack that needs no colluders, e.g. sign_flip.")
@click.option("--attack-param", multiple=True, metavar="KEY=VALUE", hidden=True)
def join(run_file: Path, data: Path, eval_data: Path | None, listen: tuple[str, ...], bootstrap: tuple[str, ...],
         announce: tuple[str, ...],
         mdns: bool, dht: bool, private: bool, autonat: bool, relay_service: bool | None, out: Path, key: Path | None, rounds: int | None, local_steps: int | None,
         step_timeout: float | None, defence: str | None,
         defence_param: tuple[str, ...], max_neighbours: int, min_neighbours: int, neighbour_wait: float,
         linger: float, eval_size: int, threads: int, metrics_addr: str | None, index: int | None, attack: str | None,
         attack_param: tuple[str, ...]) -> None:
    """Join a run: discover its peers, train on your data, gossip adapters, checkpoint every round.

    Q and the round window are the run file's (part of its contract). Ctrl-C or SIGTERM stops cleanly;
    running the same command again resumes from the checkpoint.
    """
    import contextlib
    import dataclasses

    import trio

    from p2pfed.daemon.files import attach_log_file
    from p2pfed.daemon.metrics import parse_address, serving
    from p2pfed.daemon.node import Node, NodeConfig, serve
    from p2pfed.daemon.runfile import RunFile
    from p2pfed.robust.registry import DEFAULT_DEFENCE

    if metrics_addr is not None:
        parse_address(metrics_addr)  # a typo fails now, not after the model has loaded
    _quiet_terminal_handlers()
    attach_log_file(out)
    overrides: dict[str, Any] = {"rounds": rounds, "local_steps": local_steps, "step_timeout": step_timeout}
    gossip = dataclasses.replace(RunFile.load(run_file).gossip, **{k: v for k, v in overrides.items() if v is not None})
    cfg = NodeConfig(
        run_file=run_file, data=data, out=out, eval_data=eval_data, identity=key, listen=listen,
        bootstrap=bootstrap, announce=announce, mdns=mdns, dht=dht, private=private, autonat=autonat, relay_service=relay_service, gossip=gossip, defence=defence or DEFAULT_DEFENCE,
        defence_params=key_values(defence_param, "--defence-param"), max_neighbours=max_neighbours,
        min_neighbours=min_neighbours, neighbour_wait_s=neighbour_wait, linger_s=linger, eval_size=eval_size,
        threads=threads,
        index=index, attack=attack, attack_params=key_values(attack_param, "--attack-param"),
    )

    def progress(line: str) -> None:
        click.echo(line, err=True)
        logging.getLogger("p2pfed.daemon").info("%s", line)

    try:
        node = Node.load(cfg, progress=progress)
    except KeyboardInterrupt:
        click.echo("interrupted while loading; nothing to save", err=True)
        raise SystemExit(130) from None
    click.echo(f"peer {node.identity.peer_id} · topic {node.manifest.topic} · {node.gossip.rounds} rounds "
               f"K={node.gossip.local_steps} Q={node.gossip.gossip_steps}", err=True)
    with contextlib.ExitStack() as stack:
        if metrics_addr is not None:
            host, port = stack.enter_context(serving(node.metrics, metrics_addr))
            shown = f"[{host}]" if ":" in host else host
            click.echo(f"metrics at http://{shown}:{port}/metrics", err=True)
        trio.run(serve, node)


@click.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=DEFAULT_OUT, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the raw status.json.")
def status(out: Path, as_json: bool) -> None:
    """Round, neighbours with reputation, last evaluation, bytes in/out, rejections by reason."""
    from p2pfed.daemon.status import format_status, read_status

    current = read_status(out)
    click.echo(json.dumps(current, indent=2) if as_json else format_status(current))


def _quiet_terminal_handlers() -> None:
    """node.log takes INFO; the terminal keeps the level -v chose. py-libp2p's own warnings (e.g. the DHT's
    "Failed to read DHT message from stream" on every stream a remote closes) go to node.log only, unless
    -v asked for them: they are routine on a live network and would drown the round lines."""
    root = logging.getLogger()
    for handler in root.handlers:
        if handler.level == logging.NOTSET:
            handler.setLevel(root.level)
        if root.level >= logging.WARNING:
            handler.addFilter(_not_libp2p_chatter)
    logging.getLogger("libp2p").setLevel(logging.WARNING)


def _not_libp2p_chatter(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR or not record.name.startswith("libp2p")
