"""Builds a NAT topology in network namespaces and runs `p2pfed join` daemons in it (for
tests/test_netns_nat.py; run as root under `unshare -n -m`, so that every namespace, address and rule
lives and dies with this process).

    public  (198.51.100.1 on 198.51.100.0/24, 203.0.113.1 on 203.0.113.0/24): the relay peer, of ANOTHER run
    rtr1    (198.51.100.2 | 10.9.1.1, MASQUERADE, no new inbound)  -- priv1 (10.9.1.2): peer of run A
    rtr2    (203.0.113.2  | 10.9.2.1, MASQUERADE, no new inbound)  -- priv2 (10.9.2.2): peer of run A

The private peers are given only the relay peer's address; priv1 starts with `--private`, priv2 is left
to AutoNAT to find out. They must find each other through the DHT,
reserve relay slots, and train. A new inbound connection to a router itself is dropped (ROUTER "drops", as
a home router's firewall does) or answered with a RST ("resets", Linux's default without a firewall).
Usage: python netns_nat.py ROOT SECONDS ROUTER; writes ROOT/result.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "p2pfed.cli.main"]
PORT = 4001
PUBLIC_ADDR = "198.51.100.1"


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


def build(tag: str, router: str) -> dict[str, str]:
    """The namespaces (named with `tag`) and their links; returns role -> namespace name. `router`: what
    the NAT routers do with a new inbound connection to themselves ("drops" or "resets")."""
    names = {role: f"{role}-{tag}" for role in ("public", "rtr1", "rtr2", "priv1", "priv2")}
    subprocess.run(["mount", "-t", "tmpfs", "none", "/run"], check=True)
    os.makedirs("/run/netns", exist_ok=True)
    for name in names.values():
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
    pub = names["public"]
    for i, (net, private) in enumerate((("198.51.100", "10.9.1"), ("203.0.113", "10.9.2")), start=1):
        rtr, priv = names[f"rtr{i}"], names[f"priv{i}"]
        sh("ip", "link", "add", f"p{i}", "netns", pub, "type", "veth", "peer", "name", f"r{i}", "netns", rtr)
        sh("ip", "link", "add", f"l{i}", "netns", rtr, "type", "veth", "peer", "name", f"v{i}", "netns", priv)
        sh("ip", "-n", pub, "addr", "add", f"{net}.1/24", "dev", f"p{i}")
        sh("ip", "-n", rtr, "addr", "add", f"{net}.2/24", "dev", f"r{i}")
        sh("ip", "-n", rtr, "addr", "add", f"{private}.1/24", "dev", f"l{i}")
        sh("ip", "-n", priv, "addr", "add", f"{private}.2/24", "dev", f"v{i}")
        for ns, dev in ((pub, f"p{i}"), (rtr, f"r{i}"), (rtr, f"l{i}"), (priv, f"v{i}")):
            sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", priv, "route", "add", "default", "via", f"{private}.1")
        sh("ip", "-n", rtr, "route", "add", "default", "via", f"{net}.1")
        sh("ip", "netns", "exec", rtr, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        nat = ["ip", "netns", "exec", rtr, "iptables"]
        sh(*nat, "-t", "nat", "-A", "POSTROUTING", "-o", f"r{i}", "-j", "MASQUERADE")
        sh(*nat, "-A", "FORWARD", "-i", f"r{i}", "-o", f"l{i}", "-m", "state", "--state",
           "ESTABLISHED,RELATED", "-j", "ACCEPT")
        sh(*nat, "-A", "FORWARD", "-i", f"r{i}", "-o", f"l{i}", "-j", "DROP")
        if router == "drops":  # nor to the router itself, as a home router's firewall drops them
            sh(*nat, "-A", "INPUT", "-i", f"r{i}", "-m", "state", "--state", "NEW", "-j", "DROP")
        # "resets": the router's own stack answers an unsolicited SYN with a RST (Linux's default)
    sh("ip", "netns", "exec", pub, "sysctl", "-qw", "net.ipv4.ip_forward=1")  # routes rtr1 <-> rtr2
    return names


def join(ns: str, root: Path, name: str, run: str, data: str, extra: list[str]) -> subprocess.Popen[bytes]:
    node = root / name
    node.mkdir(exist_ok=True)
    command = ["ip", "netns", "exec", ns, *CLI, "join", "--run", str(root / run), "--data", str(root / data),
               "--eval", str(root / "data" / "eval.jsonl"), "--listen", f"/ip4/0.0.0.0/tcp/{PORT}",
               "--out", str(node), "--threads", "1", *extra]
    err = (node / "stderr.txt").open("ab")
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err)


def status(node: Path) -> dict:  # type: ignore[type-arg]
    try:
        return json.loads((node / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def main(root: Path, seconds: float, router: str) -> None:
    names = build(str(os.getpid()), router)
    procs: list[subprocess.Popen[bytes]] = []
    result: dict[str, object] = {"paths": {}, "rounds": {}}
    deadline = time.monotonic() + seconds
    try:
        # the relay peer is of run B: it waits for run-B neighbours that never come, serving meanwhile
        procs.append(join(names["public"], root, "relay", "run-b.toml", "data/peer-00.jsonl",
                          ["--announce", f"/ip4/{PUBLIC_ADDR}/tcp/{PORT}", "--min-neighbours", "1",
                           "--wait", str(int(seconds) + 60)]))
        relay = root / "relay"
        while not status(relay).get("peer_id") or status(relay).get("state") != "waiting":
            if time.monotonic() > deadline:
                raise TimeoutError("the relay peer did not start")
            time.sleep(0.2)
        boot = f"/ip4/{PUBLIC_ADDR}/tcp/{PORT}/p2p/{status(relay)['peer_id']}"
        result["bootstrap"] = boot
        # priv1 is told it is behind NAT; priv2 must find out through AutoNAT (the relay peer cannot dial it)
        for i, told in ((1, ["--private"]), (2, [])):
            procs.append(join(names[f"priv{i}"], root, f"priv{i}", "run-a.toml", f"data/peer-{i - 1:02d}.jsonl",
                              [*told, "--bootstrap", boot, "--min-neighbours", "1", "--wait", str(int(seconds))]))
        privs = [root / "priv1", root / "priv2"]
        seen: dict[str, set[str]] = {"priv1": set(), "priv2": set()}
        while time.monotonic() < deadline:
            states = [status(p) for p in privs]
            for node, state in zip(privs, states, strict=True):
                for info in state.get("neighbours", {}).values():
                    if state.get("state") == "running":
                        seen[node.name].add(info.get("path", "none"))
            if all(s.get("state") in ("finished", "stopped") for s in states):
                break
            if any(p.poll() is not None for p in procs[1:]) and not all(
                s.get("state") == "finished" for s in states
            ):
                break
            time.sleep(0.2)
        result["paths"] = {k: sorted(v) for k, v in seen.items()}
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
        result["returncodes"] = [proc.returncode for proc in procs]
        (root / "result.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3])
