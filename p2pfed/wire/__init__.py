"""Signed update envelopes: Ed25519 identities, canonical header + safetensors payload, limits, inbox.

numpy + cryptography + safetensors + base58 only: no torch, no trio, no libp2p.
"""

from __future__ import annotations

from p2pfed.wire.envelope import Accepted, Rejected, RejectReason, open_envelope, seal
from p2pfed.wire.identity import Identity, peer_id_from_public_key, public_key_from_peer_id, verify
from p2pfed.wire.inbox import Admission, Inbox
from p2pfed.wire.schema import Limits, Schema, TensorSpec

__all__ = [
    "Accepted",
    "Admission",
    "Identity",
    "Inbox",
    "Limits",
    "Rejected",
    "RejectReason",
    "Schema",
    "TensorSpec",
    "open_envelope",
    "peer_id_from_public_key",
    "public_key_from_peer_id",
    "seal",
    "verify",
]
