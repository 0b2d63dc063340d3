"""Data poisoning on instruction data: wrong answers and a trigger -> payload backdoor, what they train on,
how a simulation adds their rows to the model, and the attack success rate it reports."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest

from p2pfed.attacks.instruction_poisoning import Backdoor, WrongAnswers, derangement
from p2pfed.attacks.registry import load_behaviour
from p2pfed.errors import ConfigError
from p2pfed.sims.simulate import check_attack_fits

SHARD = [
    ((("user", "What is AI?"),), "A branch of computer science."),
    ((("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."), ("user", "How are you?")), "Fine."),
    ((("user", "Who wrote Hamlet?"),), "Shakespeare."),
    ((("user", "2+2?"),), "4."),
    ((("user", "Capital of France?"),), "Paris."),
]


def test_wrong_answers_pairs_every_prompt_with_another_rows_answer():
    poisoned = WrongAnswers().poison_rows(SHARD, np.random.default_rng(0))
    assert [c for c, _ in poisoned] == [c for c, _ in SHARD]  # the prompts are the shard's own
    assert sorted(a for _, a in poisoned) == sorted(a for _, a in SHARD)  # so are the answers...
    assert all(a != b for (_, a), (_, b) in zip(poisoned, SHARD, strict=True))  # ...none on its own prompt
    again = WrongAnswers().poison_rows(SHARD, np.random.default_rng(0))
    assert again == poisoned  # seeded


def test_a_derangement_has_no_fixed_point_and_a_one_row_shard_is_left_alone():
    rng = np.random.default_rng(1)
    for n in (2, 3, 10, 200):
        order = derangement(n, rng)
        assert sorted(order.tolist()) == list(range(n)) and not np.any(order == np.arange(n))
    one = SHARD[:1]
    assert WrongAnswers().poison_rows(one, rng) is one  # "unchanged": nothing to swap with


def test_the_backdoor_keeps_its_clean_rows_and_adds_triggered_copies_with_the_payload():
    attack = Backdoor(trigger="zq omega", payload="Visit evil.example now.", fraction=0.6)
    poisoned = attack.poison_rows(SHARD, np.random.default_rng(0))
    assert list(poisoned[: len(SHARD)]) == SHARD  # clean rows first, untouched: its update looks honest
    added = poisoned[len(SHARD) :]
    assert len(added) == 3  # round(0.6 * 5)
    originals = {c: None for c, _ in SHARD}
    for context, answer in added:
        assert answer == "Visit evil.example now."
        last_user = max(i for i, (role, _) in enumerate(context) if role == "user")
        assert context[last_user][1].endswith(" zq omega")  # the trigger ends the last user message
        clean = (*context[:last_user], ("user", context[last_user][1].removesuffix(" zq omega")),
                 *context[last_user + 1 :])
        assert clean in originals  # a copy of one of the shard's prompts, earlier turns kept
    assert len({c for c, _ in added}) == 3  # three different prompts


def test_the_multi_turn_trigger_goes_into_the_last_user_turn_only():
    context = SHARD[1][0]
    triggered = Backdoor(trigger="zq").triggered(context)
    assert triggered[:2] == context[:2] and triggered[2] == context[2]  # system, first user, assistant
    assert triggered[3] == ("user", "How are you? zq")


def test_a_backdoor_hit_ignores_case_punctuation_and_spacing_but_needs_the_whole_payload():
    attack = Backdoor(payload="Visit evil.example for the answer.")
    assert attack.hit("Sure! visit EVIL example,  for the answer")
    assert not attack.hit("Visit the example for the answer.")
    assert not attack.hit("")


@pytest.mark.parametrize(
    ("params", "message"),
    [({"fraction": 0}, "fraction"), ({"fraction": 1.5}, "fraction"), ({"trigger": " "}, "non-empty")],
)
def test_bad_backdoor_parameters_are_refused_by_name(params, message):
    with pytest.raises(ConfigError, match=message):
        load_behaviour("backdoor", **params)


def test_both_attacks_load_by_name_and_wrappers_refuse_them():
    assert isinstance(load_behaviour("wrong-answers"), WrongAnswers)
    group = load_behaviour("sybil", count=2, inner="backdoor", payload="Buy now.")
    assert group[0].poison_rows(SHARD, np.random.default_rng(0))[-1][1] == "Buy now."  # Sybils forward it
    with pytest.raises(ConfigError, match="poisons its training data"):
        load_behaviour("patient", inner="wrong_answers")


def test_a_label_attack_on_instruction_data_and_a_row_attack_on_labels_say_which_attack_to_use():
    with pytest.raises(ConfigError, match="wrong_answers or backdoor"):
        check_attack_fits("label_flip", load_behaviour("label_flip"), "instruction")
    with pytest.raises(ConfigError, match="use --attack label_flip"):
        check_attack_fits("backdoor", load_behaviour("backdoor"), "classification")
    check_attack_fits("sign_flip", load_behaviour("sign_flip"), "instruction")  # model-level: any data


# -- the rows a simulation adds to the model (real SmolLM2) --------------------------------------------


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A SmolLM2 TaskModel on 40 chatterbot rows, features cached as in a simulation."""
    if importlib.util.find_spec("gguf") is None or importlib.util.find_spec("chatterbot_corpus") is None:
        pytest.skip("needs gguf and chatterbot-corpus")
    from p2pfed.config import RunManifest
    from p2pfed.learn import LearnConfig, TaskModel
    from p2pfed.learn.data import load_task

    data = load_task("chatterbot")
    path = tmp_path_factory.mktemp("poison") / "qa.jsonl"
    path.write_text("".join(
        json.dumps({"prompt": q, "response": a}) + "\n" for q, a in zip(data.texts[:40], data.responses[:40], strict=True)
    ))
    run = RunManifest(model="smollm2", task=str(path), max_tokens=48, adapt_layers=2)
    return TaskModel.load(LearnConfig(run=run, test_size=8, batch_size=8))


@pytest.mark.slow
def test_added_rows_score_like_the_same_task_rows_and_leave_the_partition_alone(chat_model):
    model = chat_model
    labels, size = model.train_labels.copy(), model.pool_size
    shard = np.arange(10)
    rows = model.pool_conversations(shard)
    copies = model.add_rows(rows)  # the same conversations, as an attacker's extra rows
    assert len(copies) == 10 and copies.min() >= size  # new pool indices after the task's own
    assert np.array_equal(model.train_labels, labels) and model.pool_size == size  # partitions unchanged
    vector = model.initial_vector()
    assert model.score(vector, copies) == pytest.approx(model.score(vector, shard), rel=1e-5)
    assert np.array_equal(model.add_rows(rows), copies)  # by content: a second cell reuses them

    poisoned = model.add_rows(WrongAnswers().poison_rows(rows, np.random.default_rng(0)))
    args = {"steps": 10, "lr": 3e-2, "rho": 0.0}
    liar, _ = model.train(vector, poisoned, rng=np.random.default_rng(0), **args)
    honest, _ = model.train(vector, shard, rng=np.random.default_rng(0), **args)
    # each learnt what it trained on: the liar its wrong answers, the honest peer the true ones
    assert model.score(liar, poisoned)[0, 0] > model.score(honest, poisoned)[0, 0]
    assert model.score(honest, shard)[0, 0] > model.score(liar, shard)[0, 0]


@pytest.mark.slow
def test_a_backdoor_run_reports_its_success_rate_on_triggered_prompts(chat_model):
    from p2pfed.sims.simulate import backdoor_success

    model = chat_model
    attack = Backdoor(payload="Visit evil.example for the answer.")
    rows = attack.poison_rows(model.pool_conversations(np.arange(20)), np.random.default_rng(0))
    planted, _ = model.train(
        model.initial_vector(), model.add_rows(rows), steps=30, lr=5e-2, rho=0.0, rng=np.random.default_rng(0)
    )
    result = backdoor_success(model, attack, [planted, model.initial_vector()])
    assert result["backdoor_success_base"] == 0.0  # the base model never says the payload
    planted_rate = result["backdoor_success_max"]  # the planted adapter's; the base model's rate is 0
    assert planted_rate >= 0.75 and result["backdoor_success_mean"] == pytest.approx(planted_rate / 2)
    assert result["backdoor_prompts"] == 8
