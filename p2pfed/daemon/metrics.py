"""A node's Prometheus metrics, served as text over HTTP (`p2pfed join --metrics 127.0.0.1:9100`).

Each node has its own `CollectorRegistry` (not prometheus_client's global one), so that several nodes
in one process, as in the tests, each serve only their own figures. The round loop feeds it once per
round with the `RoundReport`; the HTTP server runs in prometheus_client's own daemon thread, and the
metric objects lock internally, so a scrape never waits for the event loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest, start_http_server

from p2pfed.errors import ConfigError
from p2pfed.peer.peer import RoundReport


class NodeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.round = Gauge("p2pfed_round", "Rounds this node has completed", registry=r)
        self.train_loss = Gauge(
            "p2pfed_local_loss", "Training loss of the last round's local steps", registry=r
        )
        self.test_accuracy = Gauge(
            "p2pfed_test_accuracy",
            "Accuracy on the evaluation rows at the last evaluation",
            registry=r,
        )
        self.test_loss = Gauge(
            "p2pfed_test_loss", "Loss on the evaluation rows at the last evaluation", registry=r
        )
        self.bytes_out = Counter("p2pfed_bytes_sent", "Envelope bytes sent", registry=r)
        self.bytes_in = Counter("p2pfed_bytes_received", "Envelope bytes received", registry=r)
        self.rejections = Counter(
            "p2pfed_rejections", "Updates rejected, by reason", ["reason"], registry=r
        )
        self.neighbours = Gauge("p2pfed_neighbours", "Connected neighbours of this run", registry=r)
        self.reputation = Gauge(
            "p2pfed_reputation",
            "Reputation of each peer the defence has scored",
            ["peer"],
            registry=r,
        )
        self.rewires = Counter(
            "p2pfed_rewires", "Neighbours membership evicted for evidence (and replaced)", registry=r
        )
        self.refused = Counter(
            "p2pfed_transport_refusals",
            "Streams, frames and connections the transport refused or failed to read, by reason",
            ["reason"],
            registry=r,
        )
        self.relay = Gauge(
            "p2pfed_relay",
            "Relay use now: relayed_neighbours and direct_neighbours (the path each neighbour's "
            "connection takes), reservations (relays holding a slot for us), circuits_served (what we "
            "relay for others), hole_punched (relayed links DCUtR made direct), behind_nat (1 when --private "
            "or AutoNAT found nobody could dial us back)",
            ["kind"],
            registry=r,
        )
        # the cumulative counts seen at the last report (the report's and the transport's), by series
        self._totals: dict[tuple[Counter, str], int] = {}

    def observe(
        self,
        report: RoundReport,
        neighbours: Sequence[str],
        transport: Mapping[str, int] | None = None,
        relay: Mapping[str, int] | None = None,
    ) -> None:
        """Take in one round's report, the neighbours at its end and the transport's cumulative counters:
        `evict` (membership's rewires), `refused.*` (resource caps) and `recv_fail.*` (unreadable frames),
        the last two as `p2pfed_transport_refusals_total{reason}`; and the transport's relay use now
        (`p2pfed_relay{kind}`)."""
        for kind, value in (relay or {}).items():
            self.relay.labels(kind).set(value)
        counters = transport or {}
        self._advance(self.rewires, "", counters.get("evict", 0))
        for key, count in counters.items():
            if key.startswith(("refused.", "recv_fail.")):
                self._advance(self.refused, key, count)
        self.round.set(report.round + 1)
        self.train_loss.set(report.train_loss)
        if report.accuracy is not None:
            self.test_accuracy.set(report.accuracy)
        if report.loss is not None:
            self.test_loss.set(report.loss)
        self.bytes_out.inc(report.bytes_sent)
        self.bytes_in.inc(report.bytes_received)
        for reason, count in report.rejections.items():  # cumulative in the report
            self._advance(self.rejections, reason, count)
        self.neighbours.set(len(neighbours))
        self.reputation.clear()  # peers forgotten since the last round disappear
        for peer, score in report.reputation.items():
            self.reputation.labels(peer).set(score)

    def _advance(self, counter: Counter, label: str, total: int) -> None:
        """Bring `counter` (its `label` series; "" for an unlabelled one) up to a cumulative `total`."""
        series = counter.labels(label) if label else counter
        seen = self._totals.get((counter, label), 0)
        series.inc(max(0, total - seen))
        self._totals[(counter, label)] = max(seen, total)

    def text(self) -> bytes:
        """What a scrape returns (Prometheus text format)."""
        return generate_latest(self.registry)


def parse_address(address: str) -> tuple[str, int]:
    """'127.0.0.1:9100' or '[::1]:9100' -> (host, port); ConfigError otherwise."""
    host, _, port = address.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"--metrics {address!r}: expected HOST:PORT, e.g. 127.0.0.1:9100")
    return host, int(port)


@contextmanager
def serving(metrics: NodeMetrics, address: str) -> Iterator[tuple[str, int]]:
    """Serve `metrics` at http://address/ while the block runs; yields the bound (host, port), the port
    chosen by the system when `address` asks for port 0."""
    host, port = parse_address(address)
    try:
        server, thread = start_http_server(port, addr=host, registry=metrics.registry)
    except OSError as exc:
        raise ConfigError(f"--metrics {address}: cannot listen there ({exc})") from exc
    try:
        yield host, server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
