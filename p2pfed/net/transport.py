"""The Transport protocol that a `Peer` runs over.

A transport moves opaque bytes (signed envelopes, see p2pfed.wire) between peer IDs. It authenticates
*connections* (for libp2p: the Noise handshake proves the remote's peer ID); it does not look inside the
bytes. Every method is bounded in time and never raises because of what a remote peer did: a failed
send returns False, garbage is the receiver's business.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import trio


@dataclass(frozen=True)
class Delivery:
    """Bytes that arrived, with the peer ID that the connection authenticated (not what the bytes claim).

    `chunks` are the frame in the pieces it was read in: a multi-MB adapter is never copied into one
    buffer on the event loop; `p2pfed.wire.open_envelope` takes the chunks as they are."""

    remote: str
    chunks: tuple[bytes, ...]

    @classmethod
    def of(cls, remote: str, data: bytes) -> Delivery:
        return cls(remote, (data,))

    @property
    def nbytes(self) -> int:
        return sum(len(chunk) for chunk in self.chunks)

    @property
    def data(self) -> bytes:
        """The frame as one bytes object (a copy, unless it arrived in one piece)."""
        return self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)


class Transport(Protocol):
    @property
    def local_id(self) -> str:
        """This peer's ID (libp2p peer ID string, e.g. '12D3Koo...')."""
        ...

    def neighbours(self) -> list[str]:
        """Peer IDs this transport can currently send to."""
        ...

    async def send(self, to: str, data: bytes) -> bool:
        """Deliver `data` to `to`; True on success. Bounded in time; never raises for remote faults."""
        ...

    @property
    def incoming(self) -> trio.MemoryReceiveChannel[Delivery]:
        """Everything that arrives for this peer, in arrival order."""
        ...
