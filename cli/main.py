"""The `p2pfed` command line (click). Each subcommand builds frozen configs and calls into the package."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import click

from p2pfed.errors import P2pfedError

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub: every model ships in a package
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class _Group(click.Group):
    """Turns p2pfed's own errors into one clear line and exit code 2, instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except P2pfedError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(2)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
def main(verbose: int) -> None:
    """p2pfed: serverless peer-to-peer LoRA fine-tuning.

    Every peer fine-tunes a LoRA adapter on its own private data and gossips it with its neighbours
    (DFedSAM-MGS: SAM local steps, then Q gossip steps with Metropolis-Hastings weights). Byzantine
    neighbours are filtered by a Bristle-style defence with reputation; every update is signed.

    \b
    Start with:   p2pfed sim                  (a real simulation on the default model and data)
    Then:         p2pfed sim --help           (peers, rounds, attacks, defences, ...)
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _register() -> None:
    from p2pfed.cli.experiment import experiment
    from p2pfed.cli.llm import export, generate
    from p2pfed.cli.network import init, join, keygen, status
    from p2pfed.cli.sim import sim

    main.add_command(sim)
    main.add_command(experiment)
    for command in (keygen, init, join, status, generate, export):
        main.add_command(command)


_register()


if __name__ == "__main__":
    main()
