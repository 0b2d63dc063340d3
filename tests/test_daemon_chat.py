"""Two `p2pfed join` processes fine-tune SmolLM2 on chat data over libp2p (issue 15, the network path):
`init --model smollm2 --task qa.jsonl` makes an instruction run, both peers train and mix every round,
the terminal shows perplexity, and the adapter a node writes loads with plain peft, gives the held-out loss
the node reported, and answers through `p2pfed generate`."""

from __future__ import annotations

import importlib.util
import json
import math
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from p2pfed.daemon.status import read_metrics
from p2pfed.learn.chat import render
from p2pfed.learn.data import load_task

pytestmark = [
    pytest.mark.slow,
    pytest.mark.network,
    pytest.mark.skipif(
        importlib.util.find_spec("gguf") is None or importlib.util.find_spec("chatterbot_corpus") is None,
        reason="needs gguf (smollm2) and chatterbot-corpus",
    ),
]

CLI = [sys.executable, "-m", "p2pfed.cli.main"]
ROUNDS = 2
MAX_TOKENS = 48
ROWS_PER_PEER = 24
EVAL_ROWS = 12


def _write(path: Path, rows: list[dict[str, str]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def network(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An instruction run on chatterbot rows, two peers joined (the second bootstraps from the first),
    both run to the end."""
    root = tmp_path_factory.mktemp("chat-join")
    data = load_task("chatterbot")
    rows = [{"prompt": q, "response": a} for q, a in zip(data.texts, data.responses, strict=True)]
    evaluation = rows[2 * ROWS_PER_PEER : 2 * ROWS_PER_PEER + EVAL_ROWS]
    _write(root / "task.jsonl", rows[: 2 * ROWS_PER_PEER + EVAL_ROWS])
    _write(root / "eval.jsonl", evaluation)
    for i in range(2):
        _write(root / f"peer-{i}.jsonl", rows[i * ROWS_PER_PEER : (i + 1) * ROWS_PER_PEER])
    subprocess.run(
        [*CLI, "init", str(root / "run.toml"), "--model", "smollm2", "--task", str(root / "task.jsonl"),
         "--rounds", str(ROUNDS), "-K", "3", "-Q", "2", "--max-tokens", str(MAX_TOKENS), "--step-timeout", "60"],
        check=True, capture_output=True,
    )
    first, second = _join(root, 0, bootstrap=None), None
    try:
        line = first.wait_for("listening on ", timeout=300)
        second = _join(root, 1, bootstrap=line.split("listening on ")[1].strip())
        assert second.wait(timeout=600) == 0, second.text()
        assert first.wait(timeout=120) == 0, first.text()
    finally:
        for node in (first, second):
            if node is not None:
                node.kill()
    return root


class _Node:
    """A `p2pfed join` subprocess whose stderr a thread copies into <node>/stderr.txt, line by line, so the
    test can block on a line (no polling) and read the whole output afterwards."""

    def __init__(self, command: list[str], node: Path) -> None:
        self.path = node / "stderr.txt"
        self.proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._copy, daemon=True).start()

    def _copy(self) -> None:
        assert self.proc.stderr is not None
        with self.path.open("w") as out:
            for line in self.proc.stderr:
                out.write(line)
                out.flush()
                self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while (line := self.lines.get(timeout=max(0.0, deadline - time.monotonic()))) is not None:
            if text in line:
                return line
        raise AssertionError(f"the node exited before printing {text!r}: {self.text()}")

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def text(self) -> str:
        return self.path.read_text()


def _join(root: Path, i: int, bootstrap: str | None) -> _Node:
    node = root / f"node-{i}"
    node.mkdir()
    command = [*CLI, "join", "--run", str(root / "run.toml"), "--data", str(root / f"peer-{i}.jsonl"),
               "--eval", str(root / "eval.jsonl"), "--listen", "/ip4/127.0.0.1/tcp/0", "--out", str(node),
               "--wait", "300", "--threads", "1"]
    if bootstrap:
        command += ["--bootstrap", bootstrap]
    return _Node(command, node)


def test_both_peers_train_chat_data_over_libp2p_and_mix_every_round(network: Path) -> None:
    for i in range(2):
        node = network / f"node-{i}"
        rows = read_metrics(node)
        assert [row["round"] for row in rows] == list(range(ROUNDS))
        assert all(row["outcomes"] == {"kept": 2} and not row["rejections"] for row in rows)  # Q=2, 1 neighbour
        assert rows[-1]["train_loss"] < rows[0]["train_loss"]  # it learns its own answers
        status = json.loads((node / "status.json").read_text())
        assert status["state"] == "finished" and status["round"] == ROUNDS
        stderr = (node / "stderr.txt").read_text()
        round_lines = [line for line in stderr.splitlines() if line.startswith("round ")]
        assert len(round_lines) == ROUNDS and all(" · ppl " in line and "token acc" in line for line in round_lines)
        assert math.exp(rows[-1]["loss"]) == pytest.approx(float(round_lines[-1].split(" · ppl ")[1].split()[0]), abs=0.01)
        assert "Failed to read DHT message" not in stderr  # py-libp2p's chatter goes to node.log only


def _answer_loss(model: torch.nn.Module, rows: list[tuple[list[int], int]]) -> float:
    total, count = 0.0, 0
    with torch.inference_mode():
        for ids, prompt_len in rows:
            input_ids = torch.tensor([ids])
            labels = input_ids.clone()
            labels[0, :prompt_len] = -100
            n = len(ids) - prompt_len
            total += float(model(input_ids=input_ids, labels=labels).loss) * n
            count += n
    return total / count


def test_the_nodes_adapter_loads_with_plain_peft_gives_the_loss_the_node_reported_and_answers(network: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from p2pfed.learn.models import resolve_model

    directory = resolve_model("smollm2").directory
    tokenizer = AutoTokenizer.from_pretrained(directory)
    evaluation = [json.loads(line) for line in (network / "eval.jsonl").read_text().splitlines()]
    rows = [render(tokenizer, (("user", r["prompt"]),), r["response"], MAX_TOKENS) for r in evaluation]
    base = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32).eval()
    tuned = PeftModel.from_pretrained(base, str(network / "node-0" / "adapter")).eval()
    reported = read_metrics(network / "node-0")[-1]["loss"]  # the node's held-out loss after its last round
    assert _answer_loss(tuned, rows) == pytest.approx(reported, rel=1e-4)

    answer = subprocess.run(
        [*CLI, "generate", "--adapter", str(network / "node-0" / "adapter"), "--max-new-tokens", "16",
         evaluation[0]["prompt"]],
        check=True, capture_output=True, text=True,
    )
    assert answer.stdout.strip()
