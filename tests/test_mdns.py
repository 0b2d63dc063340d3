"""With mDNS on and no bootstrap address, peers in separate processes find each other, become
neighbours and exchange signed updates: on one machine, and across a LAN with the `p2pfed join` default
listen address 0.0.0.0. Runs in fresh network namespaces (loopback, and a veth pair between two of them
for the LAN), so no mDNS packet can leave this machine."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.network, pytest.mark.slow]

PEERS = 3
HELPER = Path(__file__).with_name("mdns_peers.py")


def in_fresh_netns(*command: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """Run `command` in a new network namespace whose only interface, loopback, is up."""
    return subprocess.run(
        ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$0" "$@"', *command],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@pytest.fixture(scope="module")
def netns() -> None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        pytest.skip(
            "needs unshare (util-linux) and ip (iproute2) to isolate mDNS in a network namespace"
        )
    probe = in_fresh_netns("true", timeout_s=10)
    if probe.returncode != 0:
        pytest.skip(f"unshare -n is not permitted here: {probe.stderr.strip()[:200]}")


def test_peers_find_each_other_by_mdns_alone_and_exchange_signed_updates(netns: None) -> None:
    result = in_fresh_netns(
        sys.executable, str(HELPER), "--peers", str(PEERS), "--timeout", "60", timeout_s=180
    )
    assert result.returncode == 0, result.stderr[-3000:]
    reports = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(reports) == PEERS
    everyone = {r["peer_id"] for r in reports}
    for report in reports:
        others = sorted(everyone - {report["peer_id"]})
        assert report["bootstrap"] == []  # nobody was told an address
        assert report["mdns_found"] >= 1  # what they learned, they learned from mDNS
        assert report["neighbours"] == others
        assert report["accepted_from"] == others  # verified signed updates from every other peer


def test_peers_listening_on_0_0_0_0_find_each_other_across_a_lan(netns: None) -> None:
    # py-libp2p advertises 0.0.0.0 as is: the other machine then dials itself (the transport fixes it)
    result = in_fresh_netns(sys.executable, str(HELPER), "--lan", "--timeout", "60", timeout_s=180)
    assert result.returncode == 0, result.stderr[-3000:]
    here, there = (json.loads(line) for line in result.stdout.splitlines())
    assert here["interfaces"] == ["lo", "p2pfed-a"] and there["interfaces"] == ["lo", "p2pfed-b"]
    for report, other in ((here, there), (there, here)):
        assert report["listen"] == "/ip4/0.0.0.0/tcp/4001" and report["bootstrap"] == []
        assert report["neighbours"] == report["accepted_from"] == [other["peer_id"]]


def test_the_helper_refuses_to_run_outside_an_isolated_namespace() -> None:
    result = subprocess.run(
        [sys.executable, str(HELPER), "--peers", "2"], capture_output=True, text=True, timeout=60
    )
    if result.returncode == 0:  # possible only on a machine whose sole interface is loopback
        pytest.skip("this machine has no interface besides loopback")
    assert result.returncode == 2 and "refusing" in result.stderr
