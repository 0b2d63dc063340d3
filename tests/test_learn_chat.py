"""Chat-format instruction data: the model's own template, loss on the assistant's answer only, the
shipped chatterbot task, and adapters that leave p2pfed (peft round trip, generate, export)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from p2pfed.errors import DataError
from p2pfed.learn.backbone import response_positions
from p2pfed.learn.chat import render
from p2pfed.learn.data import load_task

needs_gguf = pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="needs gguf (smollm2)")
needs_corpus = pytest.mark.skipif(
    importlib.util.find_spec("chatterbot_corpus") is None, reason="needs chatterbot-corpus"
)
SYSTEM = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    from p2pfed.learn.models import resolve_model

    if importlib.util.find_spec("gguf") is None:
        pytest.skip("needs gguf (smollm2)")
    return AutoTokenizer.from_pretrained(resolve_model("smollm2").directory)


def ids(tokenizer, text: str) -> list[int]:  # type: ignore[no-untyped-def]
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_a_prompt_row_renders_as_the_instruct_models_chat_and_only_the_answer_is_a_target(tokenizer):
    prompt = ids(tokenizer, SYSTEM + "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    answer = ids(tokenizer, "It is 4.<|im_end|>")  # the end-of-turn token is learnt (to stop), "\n" after it not
    row, prompt_len = render(tokenizer, (("user", "What is 2+2?"),), "It is 4.", max_tokens=200)
    assert row == prompt + answer and prompt_len == len(prompt)
    # a batch of this row and a shorter padded one: the positions that carry loss predict the answer only
    other, other_len = render(tokenizer, (("user", "Hi"),), "Hello", max_tokens=200)
    width = len(row)
    batch_ids = torch.zeros(2, width, dtype=torch.long)
    batch_ids[0, : len(row)] = torch.tensor(row)
    batch_ids[1, : len(other)] = torch.tensor(other)
    rows, cols = response_positions(torch.tensor([prompt_len, other_len]), torch.tensor([len(row), len(other)]), width)
    targets = batch_ids[rows, cols + 1]
    assert targets[rows == 0].tolist() == answer
    assert targets[rows == 1].tolist() == ids(tokenizer, "Hello<|im_end|>")


def test_a_messages_row_keeps_earlier_turns_as_context_and_learns_the_last_answer(tokenizer, tmp_path):
    row = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
        {"role": "assistant", "content": "Rome."},
    ]}
    path = tmp_path / "chat.jsonl"
    path.write_text(json.dumps(row) + "\n")
    data = load_task(str(path))
    assert data.kind == "instruction" and data.texts == ("And of Italy?",) and data.responses == ("Rome.",)
    rendered, prompt_len = render(tokenizer, data.contexts[0], data.responses[0], max_tokens=200)
    expected_prompt = (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nCapital of France?<|im_end|>\n"
        "<|im_start|>assistant\nParis.<|im_end|>\n<|im_start|>user\nAnd of Italy?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert rendered[:prompt_len] == ids(tokenizer, expected_prompt)  # the given system message, no default
    assert rendered[prompt_len:] == ids(tokenizer, "Rome.<|im_end|>")


def test_a_long_row_keeps_the_generation_prompt_and_half_the_budget_for_the_answer(tokenizer):
    row, prompt_len = render(tokenizer, (("user", "word " * 200),), "yes " * 100, max_tokens=64)
    assert len(row) == 64 and prompt_len == 32
    generation_prompt = ids(tokenizer, "<|im_start|>assistant\n")
    assert row[prompt_len - len(generation_prompt) : prompt_len] == generation_prompt


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([{"role": "user", "content": "hi"}], "at least 2"),
        ([{"role": "user", "content": "hi"}, {"role": "user", "content": "hi"}], "last message must be"),
        ([{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "x"}], "role must be one of"),
        ([{"role": "system", "content": "s"}, {"role": "assistant", "content": "x"}], "need a user turn"),
        ([{"role": "user", "content": ""}, {"role": "assistant", "content": "x"}], "non-empty string"),
    ],
)
def test_a_bad_messages_row_names_the_file_line_and_problem(tmp_path, messages, message):
    path = tmp_path / "bad.jsonl"
    good = {"prompt": "p", "response": "r"}
    path.write_text(json.dumps(good) + "\n" + json.dumps({"messages": messages}) + "\n")
    with pytest.raises(DataError, match=message) as info:
        load_task(str(path))
    assert f"{path}:2:" in str(info.value)


@needs_corpus
def test_chatterbot_is_a_shipped_instruction_task_with_topics_for_a_non_iid_split():
    data = load_task("chatterbot")
    assert data.kind == "instruction" and len(data) == 1038
    assert len(data.groups) == 21 and "trivia" in data.groups
    assert np.bincount(data.labels).min() >= 1  # every topic has rows: a Dirichlet split skews by topic
    assert len(set(data.texts)) == len(data)  # a question asked twice kept one answer: no test/pool overlap
    assert data.responses[data.texts.index("What is AI?")].startswith("Artificial Intelligence")


# -- adapters outside p2pfed (slow: real SmolLM2) ----------------------------------------------------


@pytest.fixture(scope="module")
def trained(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A SmolLM2 TaskModel on 60 chatterbot rows, one adapter trained for 15 steps and saved."""
    if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("chatterbot_corpus") is None:
        pytest.skip("needs gguf and chatterbot-corpus")
    from p2pfed.config import RunManifest
    from p2pfed.learn import LearnConfig, TaskModel

    data = load_task("chatterbot")
    root = tmp_path_factory.mktemp("chat")
    path = root / "qa.jsonl"
    path.write_text("".join(
        json.dumps({"prompt": q, "response": a}) + "\n" for q, a in zip(data.texts[:60], data.responses[:60], strict=True)
    ))
    run = RunManifest(model="smollm2", task=str(path), max_tokens=48, adapt_layers=2)
    model = TaskModel.load(LearnConfig(run=run, test_size=12, batch_size=8, feature_cache=False))
    vector, _ = model.train(
        model.initial_vector(), np.arange(model.pool_size), steps=15, lr=3e-2, rho=0.0,
        rng=np.random.default_rng(0),
    )
    adapter = root / "adapter"
    model.save_adapter(vector, adapter)
    return model, vector, adapter


def plain_peft_loss(adapter: Path, rows: list[tuple[list[int], int]]) -> float:
    """Mean loss over answer tokens, computed by transformers + peft alone (full forward, labels -100
    on the prompt), as someone outside p2pfed would."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from p2pfed.learn.models import resolve_model

    base = AutoModelForCausalLM.from_pretrained(resolve_model("smollm2").directory, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for ids_, prompt_len in rows:
            input_ids = torch.tensor([ids_])
            labels = input_ids.clone()
            labels[0, :prompt_len] = -100
            n = len(ids_) - prompt_len
            total += float(model(input_ids=input_ids, labels=labels).loss) * n
            count += n
    return total / count


@pytest.mark.slow
def test_the_saved_adapter_gives_p2pfeds_loss_under_plain_peft(trained, tokenizer):
    model, vector, adapter = trained
    ours = model.evaluate(vector)
    assert ours.loss < model.evaluate(model.initial_vector()).loss  # it did learn something
    conversations = model.test_conversations(100)
    rows = [render(tokenizer, c, a, model.cfg.run.max_tokens) for c, a in conversations]
    assert plain_peft_loss(adapter, rows) == pytest.approx(ours.loss, rel=1e-4)


@pytest.mark.slow
def test_scoring_runs_the_lm_head_in_bf16_within_a_thousandth_of_the_exact_loss(trained):
    from p2pfed.learn.backbone import BF16_MATMUL

    model, vector, _ = trained
    rows = np.arange(model.pool_size)
    exact = model.evaluate(vector, rows).loss  # the reported metrics: float32 throughout
    fast = -float(model.score(vector[None], rows)[0, 0])  # a defence's score: bf16 LM head where native
    if not BF16_MATMUL:
        assert fast == pytest.approx(exact, rel=1e-6)
    else:
        assert fast != exact and fast == pytest.approx(exact, rel=1e-3)


@pytest.mark.slow
def test_generate_streams_a_deterministic_answer_and_export_merges_a_plain_hf_model(trained, tmp_path):
    from click.testing import CliRunner
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from p2pfed.cli.main import main
    from p2pfed.learn.chat import greedy_answer

    model, vector, adapter = trained
    prompt = model.test_conversations(1)[0][0][-1][1]
    runner = CliRunner()
    args = ["generate", "--adapter", str(adapter), "--max-new-tokens", "24", prompt]
    first, second = runner.invoke(main, args), runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    assert first.stdout.strip() and first.stdout == second.stdout  # greedy: the same answer every time
    answer = model.generate(vector, [(("user", prompt),)], max_new_tokens=24)[0]
    assert first.stdout.strip() == answer  # the CLI answers as the model p2pfed trained

    out = tmp_path / "merged"
    result = runner.invoke(main, ["export", "--adapter", str(adapter), "--merge", str(out)])
    assert result.exit_code == 0, result.output
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    merged_tokenizer = AutoTokenizer.from_pretrained(out)
    assert greedy_answer(merged, merged_tokenizer, (("user", prompt),), max_new_tokens=24) == answer
    again = runner.invoke(main, ["export", "--adapter", str(adapter), "--merge", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output  # never overwrites a model


def test_generate_refuses_a_directory_that_is_not_a_p2pfed_adapter(tmp_path):
    from click.testing import CliRunner

    from p2pfed.cli.main import main

    result = CliRunner().invoke(main, ["generate", "--adapter", str(tmp_path), "hi"])
    assert result.exit_code == 2 and "not an adapter directory written by p2pfed" in result.output


def arithmetic_rows(n: int) -> str:
    """A user's own file, nothing like chatterbot: no topics, prompt rows and messages rows mixed."""
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        a, b = (int(x) for x in rng.integers(1, 20, size=2))
        if i % 2:
            row: dict[str, object] = {"prompt": f"What is {a} plus {b}?", "response": f"{a} plus {b} is {a + b}."}
        else:
            turns = [{"role": "user", "content": f"Is {a} larger than {b}?"},
                     {"role": "assistant", "content": "Yes." if a > b else "No."}]
            row = {"messages": turns}
        lines.append(json.dumps(row) + "\n")
    return "".join(lines)


@needs_gguf
@pytest.mark.slow
@pytest.mark.parametrize("peers", [2, 4])
def test_sim_on_a_users_chat_file_runs_with_the_default_topology_on_few_peers(tmp_path, peers):
    """The README's `sim --model smollm2 --data small.jsonl --peers 4`: the default 4-regular graph
    cannot be drawn on fewer than 6 peers, so the degree adapts (and says so), and the run learns."""
    from click.testing import CliRunner

    from p2pfed.cli.main import main

    data = tmp_path / "small.jsonl"
    data.write_text(arithmetic_rows(90))
    out = tmp_path / "run"
    args = ["sim", "--model", "smollm2", "--data", str(data), "--peers", str(peers), "--rounds", "1",
            "-K", "3", "-Q", "1", "--no-adapters", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert f"--degree {peers - 1} (every peer linked to every other)" in result.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["final"]["honest_perplexity_max"] < summary["base_model"]["perplexity"]
