"""`p2pfed generate` and `p2pfed export`: use an adapter that p2pfed wrote (sim or join) outside p2pfed."""

from __future__ import annotations

from pathlib import Path

import click

ADAPTER_HELP = "An adapter directory written by p2pfed (runs/.../adapters/peer-NN, or a join node's adapter/)."


@click.command()
@click.option("--adapter", "adapter_dir", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path), help=ADAPTER_HELP)
@click.option("--system", default=None, help="A system message (default: the model's own chat template default).")
@click.option("--max-new-tokens", default=128, show_default=True, help="Stop after this many generated tokens.")
@click.argument("prompt")
def generate(adapter_dir: Path, system: str | None, max_new_tokens: int, prompt: str) -> None:
    """Answer PROMPT with the base model plus ADAPTER, streaming tokens as they are generated.

    The prompt is rendered with the model's chat template, as in training; decoding is greedy, so the
    same adapter and prompt always give the same answer.

    \b
    Example:  p2pfed generate --adapter runs/sim-x/adapters/peer-00 "What is AI?"
    """
    from transformers import TextStreamer

    from p2pfed.learn.chat import greedy_answer
    from p2pfed.learn.export import load_adapter

    model, tokenizer = load_adapter(adapter_dir, progress=lambda m: click.echo(m, err=True))
    context = ((("system", system),) if system else ()) + (("user", prompt),)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)  # type: ignore[arg-type]
    greedy_answer(model, tokenizer, context, max_new_tokens=max_new_tokens, streamer=streamer)


@click.command()
@click.option("--adapter", "adapter_dir", required=True,
              type=click.Path(exists=True, file_okay=False, path_type=Path), help=ADAPTER_HELP)
@click.option("--merge", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Write the base model with the adapter merged into its weights to this new directory.")
def export(adapter_dir: Path, out: Path) -> None:
    """Merge ADAPTER into its base model and write a plain HuggingFace model directory.

    The result loads with `AutoModelForCausalLM.from_pretrained(OUT)` and `AutoTokenizer.from_pretrained(OUT)`,
    with no peft and no p2pfed, and generates like `p2pfed generate` does.
    """
    from p2pfed.learn.export import merge_adapter

    merge_adapter(adapter_dir, out, progress=lambda m: click.echo(m, err=True))
    click.echo(f"merged model written to {out}")
