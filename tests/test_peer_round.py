"""The Peer round loop over the memory transport, with a tiny fake model so every test is instant.

Time is virtual (trio's autojump clock) and blocking work runs inline, so deadlines are exact and nothing
sleeps for real.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trio
import trio.testing
from fakes import FakeLocal

from p2pfed.attacks.base import AttackContext, Behaviour, Outgoing
from p2pfed.attacks.model_poisoning import GaussianNoise, SignFlip
from p2pfed.config import GossipConfig
from p2pfed.net.membership import EvidenceKind
from p2pfed.net.memory import MemoryNetwork
from p2pfed.peer.checkpoint import load_checkpoint
from p2pfed.peer.peer import TENSOR, Peer, RoundReport
from p2pfed.peer.topology import build_topology
from p2pfed.robust.base import Defence
from p2pfed.robust.mean import Mean
from p2pfed.sims.oracle import Oracle
from p2pfed.types import Outcome
from p2pfed.wire import Identity, Schema, seal

DIM = 3
RUN = b"r" * 32
TIMEOUT = 30.0


async def inline(fn, *args):  # type: ignore[no-untyped-def]
    return fn(*args)


class Silent(Behaviour):
    name = "silent"

    def outgoing(self, ctx: AttackContext) -> Outgoing | None:
        return None


@dataclass
class Net:
    peers: list[Peer]
    network: MemoryNetwork
    reports: list[RoundReport]
    ids: list[str]


def build(n: int = 6, *, behaviours: dict[int, Behaviour] | None = None, rounds: int = 3, q: int = 2,
          checkpoint_dir=None, defence: Defence | None = None) -> Net:  # type: ignore[no-untyped-def]
    adjacency = build_topology("ring", n)
    identities = [Identity.for_peer(11, i) for i in range(n)]
    ids = [identity.peer_id for identity in identities]
    network = MemoryNetwork(seed=11)
    gossip = GossipConfig(rounds=rounds, gossip_steps=q, step_timeout=TIMEOUT)
    targets = np.random.default_rng(0).normal(size=(n, DIM)).astype(np.float32)
    targets -= targets.mean(axis=0)  # the global optimum (mean of targets) is 0
    reports: list[RoundReport] = []
    peers = [
        Peer(
            index=i,
            identity=identities[i],
            transport=network.add(ids[i], [ids[j] for j in adjacency[i]]),
            local=FakeLocal(targets[i]),  # type: ignore[arg-type]
            run_digest=RUN,
            schema=Schema.from_tensors({TENSOR: np.zeros(DIM, np.float32)}),
            neighbour_degrees={ids[j]: len(adjacency[j]) for j in adjacency[i]},
            gossip=gossip,
            defence=defence or Mean(),
            initial=np.ones(DIM, np.float32),
            seed=11,
            compute=trio.CapacityLimiter(1),
            behaviour=(behaviours or {}).get(i),
            on_round=reports.append,
            checkpoint_dir=None if checkpoint_dir is None else checkpoint_dir / f"peer-{i}",
            run_blocking=inline,
        )
        for i in range(n)
    ]
    return Net(peers, network, reports, ids)


def run(net: Net, rounds: int, *, before=None) -> float:  # type: ignore[no-untyped-def]
    """Runs all peers to completion on a virtual clock; returns the virtual seconds it took."""
    clock = trio.testing.MockClock(autojump_threshold=0)

    async def main() -> float:
        async with trio.open_nursery() as nursery:
            for peer in net.peers:
                await nursery.start(lambda task_status, p=peer: p.run(rounds=rounds, task_status=task_status))
            if before is not None:
                await before(net)
        return trio.current_time()

    return trio.run(main, clock=clock)


def spread(vectors: list[np.ndarray]) -> float:
    stacked = np.stack(vectors)
    return float(np.linalg.norm(stacked - stacked.mean(axis=0), axis=1).max())


def test_honest_peers_converge_to_the_global_optimum() -> None:
    net = build(rounds=8, q=3)
    run(net, 8)
    final = [p.vector for p in net.peers]
    assert spread(final) < 0.35  # consensus despite different private targets
    assert float(np.linalg.norm(np.mean(final, axis=0))) < 0.05  # mean of private optima
    first = [r for r in net.reports if r.round == 0]
    assert all(r.outcomes == {"kept": 2 * 3} for r in first)  # 2 ring neighbours × Q=3, all verified and kept
    assert all(p.rejections == {} for p in net.peers)
    assert all(r.bytes_sent > 0 and r.bytes_received == r.bytes_sent for r in first)


def test_more_gossip_steps_give_closer_consensus() -> None:
    one, four = build(q=1), build(q=4)
    run(one, 3)
    run(four, 3)
    assert spread([p.vector for p in four.peers]) < 0.5 * spread([p.vector for p in one.peers])


def test_same_seed_gives_identical_vectors() -> None:
    a, b = build(), build()
    run(a, 3)
    run(b, 3)
    for pa, pb in zip(a.peers, b.peers, strict=True):
        assert np.array_equal(pa.vector, pb.vector)


def test_a_silent_neighbour_costs_one_deadline_per_step_and_is_reported_missing() -> None:
    net = build(behaviours={2: Silent()}, rounds=2, q=2)
    elapsed = run(net, 2)
    assert TIMEOUT * 2 * 2 <= elapsed < TIMEOUT * 2 * 2 + 1  # 2 rounds × Q=2 deadlines, no more
    neighbour = net.peers[1]
    assert neighbour.reputation.score(net.ids[2]) < neighbour.reputation.score(net.ids[0])
    assert all(r.outcomes.get("missing", 0) == 2 for r in net.reports if r.index in (1, 3))


def test_hostile_bytes_from_a_stranger_are_rejected_and_change_nothing() -> None:
    clean = build(rounds=2)
    run(clean, 2)

    stranger = Identity.for_peer(99, 0)
    net = build(rounds=2)
    ids = net.ids
    zeros = np.zeros(DIM, np.float32)

    async def attack(net: Net) -> None:
        as_neighbour = seal(stranger, run_digest=RUN, round=0, step=0, tensors={TENSOR: zeros})
        wrong_run = seal(stranger, run_digest=b"x" * 32, round=0, step=0, tensors={TENSOR: zeros})
        nan = seal(stranger, run_digest=RUN, round=0, step=0, tensors={TENSOR: np.full(DIM, np.nan, np.float32)})
        wrong_shape = seal(stranger, run_digest=RUN, round=0, step=0, tensors={TENSOR: np.zeros(DIM + 1, np.float32)})
        impersonating = seal(Identity.for_peer(11, 1), run_digest=RUN, round=0, step=0, tensors={TENSOR: zeros})
        for data in [b"\x00garbage" * 10, impersonating, wrong_run, nan, wrong_shape, as_neighbour]:
            net.network._put(stranger.peer_id, ids[0], data)

    run(net, 2, before=attack)
    rejections = net.peers[0].rejections
    assert rejections == {
        "malformed": 1, "impersonation": 1, "wrong_run": 1, "non_finite": 1, "wrong_schema": 1, "not_a_neighbour": 1,
    }
    for pc, pv in zip(clean.peers, net.peers, strict=True):
        assert np.array_equal(pc.vector, pv.vector)


def test_a_neighbour_sending_invalid_updates_loses_reputation() -> None:
    net = build(rounds=1, q=1)
    liar = Identity.for_peer(11, 1)

    async def garbage(net: Net) -> None:
        net.network._put(liar.peer_id, net.ids[0], b"not an envelope")

    run(net, 1, before=garbage)
    victim = net.peers[0]
    assert victim.rejections == {"malformed": 1}
    assert victim.reputation.score(liar.peer_id) < victim.reputation.score(net.ids[-1])


def test_a_neighbour_the_defence_drops_every_step_is_reported_to_membership_as_low_trust() -> None:
    ids = [Identity.for_peer(11, i).peer_id for i in range(6)]
    net = build(rounds=3, q=2, behaviours={1: SignFlip()}, defence=Oracle(frozenset({ids[1]}), Mean()))
    run(net, 3)
    evidence = dict(net.peers[0].membership_evidence())  # ring: peer 0's neighbours are 1 and 5
    assert set(evidence) == {ids[1]} and evidence[ids[1]].kind is EvidenceKind.LOW_TRUST
    assert not net.peers[0].reputation.is_quarantined(ids[1])  # far drops alone never quarantine
    assert net.peers[1].membership_evidence() == []  # the attacker reports nothing
    assert dict(net.peers[3].membership_evidence()) == {}  # nothing against honest neighbours


def test_equivocation_drops_both_updates_and_hits_reputation() -> None:
    net = build(rounds=1, q=1)
    liar = Identity.for_peer(11, 1)

    async def equivocate(net: Net) -> None:
        for value in (5.0, -5.0):
            data = seal(liar, run_digest=RUN, round=0, step=0, tensors={TENSOR: np.full(DIM, value, np.float32)})
            net.network._put(liar.peer_id, net.ids[0], data)

    run(net, 1, before=equivocate)
    victim = net.peers[0]
    assert victim.rejections["equivocation"] >= 1
    report = next(r for r in net.reports if r.index == 0)
    assert report.outcomes.get("equivocated") == 1
    assert victim.reputation.score(liar.peer_id) < victim.reputation.score(net.ids[-1])
    assert np.abs(victim.vector).max() < 2.0  # neither ±5 vector was mixed in


def test_checkpoint_written_every_round(tmp_path) -> None:  # type: ignore[no-untyped-def]
    net = build(rounds=2, checkpoint_dir=tmp_path)
    run(net, 2)
    for peer in net.peers:
        state = load_checkpoint(tmp_path / f"peer-{peer.index}")
        assert state is not None and state.round == 2
        assert np.array_equal(state.vector, peer.vector)


def test_reports_carry_reputation_of_neighbours() -> None:
    net = build(rounds=2)
    run(net, 2)
    last = [r for r in net.reports if r.round == 1]
    assert all(set(r.reputation) == set(net.peers[r.index].neighbour_degrees) for r in last)


def test_a_late_joiner_catches_up_and_adopts_its_neighbours_model() -> None:
    net = build(n=6, rounds=8, q=2)
    late = net.peers[0]
    for peer in net.peers[1:]:
        peer.round = 5  # the network is at round 5 when peer 0 (fresh, round 0) joins
    run(net, 8)
    assert late.round == 8
    rounds_run = sorted(r.round for r in net.reports if r.index == 0)
    assert rounds_run[-3:] == [5, 6, 7]  # it skipped ahead instead of replaying rounds 0–4 alone
    others = np.stack([p.vector for p in net.peers[1:]])
    assert np.linalg.norm(late.vector - others.mean(axis=0)) < 0.5


def test_quarantining_a_neighbour_does_not_stall_it() -> None:
    from p2pfed.types import Verdict

    net = build(rounds=2, q=2)
    distrusting, distrusted = net.peers[0], net.ids[1]
    distrusting.reputation.update([Verdict(distrusted, Outcome.EQUIVOCATED)], 0)
    assert distrusting.reputation.is_quarantined(distrusted)
    elapsed = run(net, 2)
    assert elapsed < TIMEOUT  # nobody waited out a deadline: peer 0 still sends to peer 1
    report = next(r for r in net.reports if r.index == 0)
    assert report.outcomes.get("quarantined") == 2  # peer 1's updates were ignored, once per step


def test_a_replaying_neighbour_answers_its_step_instead_of_stalling_it() -> None:
    from p2pfed.attacks.network import Replay

    net = build(behaviours={2: Replay(mode="envelope", lag=1)}, rounds=3, q=2)
    elapsed = run(net, 3)
    assert elapsed < TIMEOUT  # replayed envelopes are rejected and count as the replayer's answer
    assert net.peers[1].rejections["duplicate"] >= 2  # a round-old envelope is within the window: a replay
    assert net.peers[1].reputation.score(net.ids[2]) <= net.peers[1].reputation.score(net.ids[0])


def test_one_signature_per_gossip_step_serves_every_neighbour(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import p2pfed.peer.peer as peer_module

    sealed: list[bytes] = []

    def counting_seal(*args, **kwargs):  # type: ignore[no-untyped-def]
        sealed.append(real_seal(*args, **kwargs))
        return sealed[-1]

    real_seal = peer_module.seal
    monkeypatch.setattr(peer_module, "seal", counting_seal)
    net = build(n=4, rounds=2, q=3)
    run(net, 2)
    assert len(sealed) == 4 * 2 * 3  # peers × rounds × steps, not × 2 ring neighbours
    assert all(r.outcomes == {"kept": 2 * 3} for r in net.reports)  # both neighbours verified it


def test_a_repeat_from_a_neighbour_ahead_of_us_answers_its_next_step() -> None:
    """A sender that does not wait for us (a replayer, a peer that skips evaluation) can send its next
    step's message while we are still in this one. When that message brings nothing new, it answers the
    sender's next step: we must not wait out that step's deadline for it (the replay cell of the
    experiment grid used to lose a whole deadline per round this way)."""
    net = build(behaviours={1: Silent()}, rounds=1, q=2)
    ahead = Identity.for_peer(11, 1)
    update = seal(ahead, run_digest=RUN, round=0, step=0, tensors={TENSOR: np.zeros(DIM, np.float32)})

    async def send_twice(net: Net) -> None:  # its step-0 update, then a replay of it as its step-1 message
        net.network._put(ahead.peer_id, net.ids[0], update)
        net.network._put(ahead.peer_id, net.ids[0], update)

    victim = net.peers[0]
    finished: list[float] = []
    victim.on_round = lambda report: finished.append(trio.current_time())
    run(net, 1, before=send_twice)
    assert victim.rejections == {"duplicate": 1}
    assert finished and finished[0] < TIMEOUT  # peer 2, the silent peer's other neighbour, waits 2 deadlines


class RecordingNoise(GaussianNoise):
    """The Gaussian attack, remembering what it sent to whom."""

    def __init__(self) -> None:
        super().__init__(sigma=1.0)
        self.sent: dict[tuple[int, int, str], np.ndarray] = {}

    def outgoing(self, ctx: AttackContext) -> Outgoing:
        message = super().outgoing(ctx)
        assert message.vector is not None
        self.sent[(ctx.round, ctx.step, ctx.recipient)] = message.vector - ctx.own
        return message


def test_a_gaussian_attacker_sends_fresh_noise_to_each_recipient_and_the_same_under_the_same_seed() -> None:
    draws = []
    for _ in range(2):
        attacker = RecordingNoise()
        run(build(6, behaviours={0: attacker}, rounds=1, q=1), 1)
        draws.append(attacker.sent)
    (first, second), rest = sorted(draws[0]), draws[1]
    assert first[:2] == second[:2] and first[2] != second[2]  # one step, the attacker's two ring neighbours
    assert not np.allclose(draws[0][first], draws[0][second])  # each recipient gets its own noise
    assert all(np.array_equal(draws[0][k], rest[k]) for k in draws[0])  # and the same again under the seed


def test_the_defence_sees_where_our_round_started_and_where_our_own_training_took_us() -> None:
    seen: list[tuple[int, np.ndarray, np.ndarray]] = []

    class Recording(Mean):
        def __call__(self, inp):  # type: ignore[no-untyped-def]
            assert inp.anchor is not None and inp.trained is not None
            seen.append((inp.round, inp.anchor.copy(), inp.trained.copy()))
            return super().__call__(inp)

    net = build(4, rounds=2, q=2)
    peer = net.peers[0]
    peer.defence = Recording()
    run(net, 2)
    target = peer.local.target  # FakeLocal trains halfway to its target
    first = [s for s in seen if s[0] == 0]
    assert len(first) == 2  # both gossip steps of round 0 see the same evidence
    np.testing.assert_allclose(first[0][1], np.ones(DIM))  # round 0 starts at the initial vector
    np.testing.assert_allclose(first[0][2], 0.5 * (np.ones(DIM) + target), rtol=1e-6)
    second = [s for s in seen if s[0] == 1][0]
    assert not np.allclose(second[1], first[0][2])  # round 1 starts where mixing left us, not where we trained
    np.testing.assert_allclose(second[2], 0.5 * (second[1] + target), rtol=1e-5)


def test_local_model_counts_the_classes_of_its_validation_split() -> None:
    from types import SimpleNamespace

    from p2pfed.peer.local import LocalModel

    labels = np.array([0, 0, 1, 1, 1, 2])
    model = SimpleNamespace(kind="classification", train_labels=labels)
    gossip = GossipConfig()
    assert LocalModel(model, np.arange(6), np.array([2, 3, 4]), gossip).validation_classes == 1  # type: ignore[arg-type]
    assert LocalModel(model, np.arange(6), np.array([0, 5]), gossip).validation_classes == 2  # type: ignore[arg-type]
    chat = SimpleNamespace(kind="instruction", train_labels=labels)
    assert LocalModel(chat, np.arange(6), np.array([0]), gossip).validation_classes is None  # type: ignore[arg-type]


def test_a_peer_holds_no_received_vector_of_a_step_it_has_mixed() -> None:
    """Memory: once a step is mixed its neighbours' vectors are dropped (kept, a simulated peer held
    round_window × Q × degree of them), and who sent them still counts for the step."""
    net = build(rounds=3, q=2)
    run(net, 3)
    for peer in net.peers:
        held = sum(len(peer.ledger.updates(r, s)) for r in peer.ledger.rounds() for s in range(2))
        assert held == 0
        assert peer.ledger.answered(2, 1, [net.ids[(peer.index + 1) % 6], net.ids[(peer.index - 1) % 6]])
