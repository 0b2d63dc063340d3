"""NAT and a stranger's view, in network namespaces (tests/netns_nat.py builds them): two peers of run A,
each in its own private namespace behind MASQUERADE, are given only the address of a public peer of run
B. priv1 is told it is behind NAT, priv2 finds out through
AutoNAT. They find each other through the DHT, reach each other through that peer's circuit relay, and
train together for 3 rounds; the test says which path carried the adapters. Behind NAT routers that drop
unsolicited inbound SYNs (a home router's firewall), DCUtR's simultaneous open then replaces the relayed
link by a direct one. Behind routers whose own stack answers them with a RST (Linux without a firewall),
the first SYN to arrive is reset before the other side's outbound SYN has opened the mapping, every
hole punch fails, and the adapters stay on the relay."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from p2pfed.daemon.status import read_metrics
from p2pfed.peer.checkpoint import load_checkpoint
from p2pfed.sims.processes import export_shards
from p2pfed.sims.simulate import SimConfig

pytestmark = [
    pytest.mark.slow,
    pytest.mark.network,
    pytest.mark.skipif(
        os.geteuid() != 0 or not shutil.which("iptables") or not shutil.which("unshare"),
        reason="needs root, iptables and unshare (CI runs as root)",
    ),
]

ROUNDS = 3
SECONDS = 600  # the whole scenario, loading three models included
HELPER = Path(__file__).with_name("netns_nat.py")
CLI = [sys.executable, "-m", "p2pfed.cli.main"]


@pytest.mark.parametrize("router", ["drops", "resets"])
def test_two_peers_behind_nat_given_another_runs_address_train_together(tmp_path: Path, router: str) -> None:
    export_shards(SimConfig(peers=2, partition="iid"), tmp_path / "data", eval_rows=100, max_rows=200)
    for name, seed in (("run-a.toml", 1), ("run-b.toml", 2)):  # different seeds: different runs
        subprocess.run([*CLI, "init", str(tmp_path / name), "--task", "sms-spam", "--rounds", str(ROUNDS),
                        "-K", "5", "-Q", "1", "--step-timeout", "60", "--seed", str(seed)],
                       check=True, capture_output=True)
    subprocess.run(["unshare", "-n", "-m", sys.executable, str(HELPER), str(tmp_path), str(SECONDS), router],
                   check=True, timeout=SECONDS + 120, env=os.environ | {"PYTHONUNBUFFERED": "1"})
    result = json.loads((tmp_path / "result.json").read_text())
    print("NAT test:", json.dumps(result))

    ids = {}
    for name in ("priv1", "priv2"):
        node = tmp_path / name
        final = json.loads((node / "status.json").read_text())
        ids[name] = final["peer_id"]
        assert final["state"] == "finished" and final["round"] >= ROUNDS, (node / "stderr.txt").read_text()[-3000:]
        rows = read_metrics(node)
        assert sum(r["bytes_received"] for r in rows) > 0  # the other's adapters reached it
        assert any(r["outcomes"].get("kept", 0) for r in rows)
        checkpoint = load_checkpoint(node)
        assert checkpoint is not None and checkpoint.round >= ROUNDS
        assert final["reachability"] == "private", name  # priv2: AutoNAT's verdict, not a flag
    assert json.loads((tmp_path / "priv2" / "status.json").read_text())["transport"]["autonat_became_private"] == 1
    relay = json.loads((tmp_path / "relay" / "status.json").read_text())
    assert relay["reachability"] == "public"  # every dial-back to it succeeded
    assert relay["neighbours"] == {}  # a peer of another run: never a neighbour of run A's peers
    for name, other in (("priv1", "priv2"), ("priv2", "priv1")):
        paths = result["paths"][name]
        final = json.loads((tmp_path / name / "status.json").read_text())["neighbours"][ids[other]]["path"]
        print(f"NAT routers that {router}: {name} reached {other} over {', '.join(paths)}; at the end {final}")
        if router == "drops":
            assert final == "direct", paths  # DCUtR punched through: the last rounds went direct
        else:
            assert paths == ["relayed"], paths  # every hole punch was reset: the relay carried everything
