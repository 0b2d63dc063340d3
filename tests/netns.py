"""A throw-away routed network of Linux network namespaces for tests (root only; needs `ip`, `nsenter`,
`iptables`).

Each namespace is held open by a `unshare --net sleep` process and addressed by that process's pid, so
nothing is named under /run/netns and nothing outlives the test: killing the holders (and the programs
the test started inside) frees every namespace, interface and iptables rule. `Lab` builds a star: one
router namespace and N host namespaces, host i at 10.77.<i>.2/24 behind the router's 10.77.<i>.1. All
traffic between hosts crosses the router's FORWARD chain, which is where a test drops it: a partition
(`partition`), random loss (`lose`), and `heal` to remove both. There is no netem in this kernel, so
`delay` adds latency with a transparent proxy in the router instead (tests/delay_proxy.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

SUBNET = "10.77"  # host i is 10.77.<i>.2; addresses exist only inside the lab's namespaces
TOOLS = ("ip", "nsenter", "unshare", "iptables")


def missing_tools() -> list[str]:
    return [tool for tool in TOOLS if shutil.which(tool) is None]


def can_run() -> str | None:
    """Why this machine cannot build a lab, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    missing = missing_tools()
    if missing:
        return f"missing {', '.join(missing)} (.ci/install installs iptables from the distribution's packages)"
    return None


class Namespace:
    """One network namespace, alive as long as its holder process."""

    def __init__(self) -> None:
        self.holder = subprocess.Popen(["unshare", "--net", "sleep", "infinity"])
        self._wait_unshared()
        self.run("ip", "link", "set", "lo", "up")

    @property
    def pid(self) -> int:
        return self.holder.pid

    def _wait_unshared(self) -> None:
        """`unshare` execs sleep once the namespace exists; until then /proc/<pid>/ns/net is ours."""
        ours = os.readlink("/proc/self/ns/net")
        for _ in range(1000):
            try:
                if os.readlink(f"/proc/{self.pid}/ns/net") != ours and self._exe().endswith("sleep"):
                    return
            except OSError:
                pass
            try:
                self.holder.wait(timeout=0.01)  # bounded: a holder that exits early is an error below
            except subprocess.TimeoutExpired:
                continue
            break
        raise RuntimeError(f"unshare --net did not start (exit {self.holder.poll()})")

    def _exe(self) -> str:
        return os.readlink(f"/proc/{self.pid}/exe")

    def command(self, *argv: str) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-n", "--", *argv]

    def run(self, *argv: str) -> str:
        done = subprocess.run(self.command(*argv), capture_output=True, text=True, timeout=30)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed in namespace {self.pid}: {done.stderr.strip()}")
        return done.stdout

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(self.command(*argv), **kwargs)

    def close(self) -> None:
        if self.holder.poll() is None:
            self.holder.send_signal(signal.SIGKILL)
            self.holder.wait(timeout=10)


class Lab:
    """A router namespace and `hosts` host namespaces (see the module docstring)."""

    def __init__(self, hosts: int) -> None:
        self.hosts: list[Namespace] = []
        self.router = Namespace()
        self._programs: list[subprocess.Popen[bytes]] = []  # started in the router; stopped with the lab
        try:
            self.router.run("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
            for i in range(hosts):
                self._add_host(i)
        except BaseException:
            self.close()  # a half-built lab frees what it made
            raise

    def _add_host(self, i: int) -> None:
        host = Namespace()
        self.hosts.append(host)  # closed with the lab even if wiring it fails
        self.router.run("ip", "link", "add", f"r{i}", "type", "veth", "peer", "name", "eth0", "netns", str(host.pid))
        self.router.run("ip", "addr", "add", f"{SUBNET}.{i}.1/24", "dev", f"r{i}")
        self.router.run("ip", "link", "set", f"r{i}", "up")
        host.run("ip", "addr", "add", f"{self.address(i)}/24", "dev", "eth0")
        host.run("ip", "link", "set", "eth0", "up")
        host.run("ip", "route", "add", "default", "via", f"{SUBNET}.{i}.1")

    @staticmethod
    def address(i: int) -> str:
        return f"{SUBNET}.{i}.2"

    def forward(self, *rule: str) -> None:
        self.router.run("iptables", "-A", "FORWARD", *rule)

    def partition(self, side_a: Sequence[int], side_b: Sequence[int]) -> None:
        """Drop every packet between a host of `side_a` and a host of `side_b`, both ways."""
        for a in side_a:
            for b in side_b:
                self.forward("-s", self.address(a), "-d", self.address(b), "-j", "DROP")
                self.forward("-s", self.address(b), "-d", self.address(a), "-j", "DROP")

    def lose(self, probability: float) -> None:
        """Drop each forwarded packet with `probability`: loss on every link, both directions."""
        self.forward("-m", "statistic", "--mode", "random", "--probability", str(probability), "-j", "DROP")

    def heal(self) -> None:
        self.router.run("iptables", "-F", "FORWARD")

    def delay(self, seconds: float, port: int = 9999) -> None:
        """Delay every byte of every TCP connection between hosts by `seconds`, each way: the router
        redirects them to a delaying proxy (tests/delay_proxy.py). Only connections opened after this call
        are delayed; `delayed` stops the proxy and says what it carried."""
        proxy = Path(__file__).with_name("delay_proxy.py")
        self._proxy = self.router.popen([sys.executable, str(proxy), str(port), str(seconds)], stdout=subprocess.PIPE)
        self._programs.append(self._proxy)
        assert self._proxy.stdout is not None
        if self._proxy.stdout.readline() != b"ready\n":  # EOF if it exits before it listens
            raise RuntimeError(f"the delaying proxy did not start (exit {self._proxy.wait(timeout=10)})")
        self.router.run("iptables", "-t", "nat", "-A", "PREROUTING", "-i", "r+", "-p", "tcp",
                        "-j", "REDIRECT", "--to-ports", str(port))

    def delayed(self) -> dict[str, Any]:
        """Stop the delaying proxy; what it carried: connections, bytes and the delay."""
        self._proxy.terminate()
        out, _ = self._proxy.communicate(timeout=30)
        return dict(json.loads(out.splitlines()[-1]))

    def dropped(self) -> int:
        """Packets the router's FORWARD rules dropped so far (evidence that a fault was really applied)."""
        out = self.router.run("iptables", "-L", "FORWARD", "-v", "-n", "-x")
        return sum(int(line.split()[0]) for line in out.splitlines()[2:] if line.split() and "DROP" in line)

    def close(self) -> None:
        for program in self._programs:
            program.kill()
            program.wait(timeout=10)
        for ns in [*self.hosts, self.router]:
            ns.close()


@contextmanager
def lab(hosts: int) -> Iterator[Lab]:
    """A `Lab` that is torn down however the test ends."""
    built = Lab(hosts)
    try:
        yield built
    finally:
        built.close()
