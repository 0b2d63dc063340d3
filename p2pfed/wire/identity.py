"""A peer's Ed25519 identity and its libp2p peer ID, computed without libp2p.

A libp2p Ed25519 peer ID is the identity multihash of the protobuf `PublicKey{Type=Ed25519, Data=key}`,
so the public key is inside the ID: a verifier needs nothing but the claimed peer ID.
Key files use libp2p's format (protobuf `PrivateKey{Type=Ed25519, Data=32-byte seed}`), so
`libp2p.identity_utils.load_identity` reads what `Identity.save` writes and vice versa.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

import base58
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from p2pfed.config import write_atomic
from p2pfed.errors import CheckpointError

_ED25519 = 1  # libp2p crypto.proto KeyType.Ed25519
_IDENTITY_MULTIHASH = 0x00
_KEY_LEN = 32
_SIG_LEN = 64
_MAX_PEER_ID_LEN = 128


def _key_protobuf(data: bytes) -> bytes:
    # field 1 (varint) = key type, field 2 (bytes) = key material; both keys are < 128 bytes
    return bytes([0x08, _ED25519, 0x12, len(data)]) + data


def peer_id_from_public_key(public_key: bytes) -> str:
    """The libp2p peer ID ('12D3KooW...') of a raw 32-byte Ed25519 public key."""
    if len(public_key) != _KEY_LEN:
        raise ValueError(f"an Ed25519 public key has {_KEY_LEN} bytes, got {len(public_key)}")
    encoded = _key_protobuf(public_key)
    return base58.b58encode(bytes([_IDENTITY_MULTIHASH, len(encoded)]) + encoded).decode("ascii")


@lru_cache(maxsize=4096)
def public_key_from_peer_id(peer_id: str) -> Ed25519PublicKey:
    """The Ed25519 public key embedded in a peer ID; ValueError if `peer_id` is not an Ed25519 ID."""
    if not isinstance(peer_id, str) or not 0 < len(peer_id) <= _MAX_PEER_ID_LEN:
        raise ValueError("not a peer ID")
    try:
        raw = base58.b58decode(peer_id)
    except ValueError as exc:
        raise ValueError(f"peer ID is not base58: {exc}") from None
    prefix = bytes([_IDENTITY_MULTIHASH, 4 + _KEY_LEN, 0x08, _ED25519, 0x12, _KEY_LEN])
    if len(raw) != len(prefix) + _KEY_LEN or not raw.startswith(prefix):
        raise ValueError("peer ID does not embed an Ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(raw[len(prefix) :])


def verify(peer_id: str, data: bytes, signature: bytes) -> bool:
    """True iff `signature` over `data` was made by the key embedded in `peer_id`. Never raises."""
    if len(signature) != _SIG_LEN:
        return False
    try:
        key = public_key_from_peer_id(peer_id)
        key.verify(signature, data)
    except (ValueError, InvalidSignature):
        return False
    return True


class Identity:
    """An Ed25519 signing key and the libp2p peer ID derived from it."""

    __slots__ = ("_key", "public_key", "peer_id")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key: bytes = private_key.public_key().public_bytes(
            Encoding.Raw, PublicFormat.Raw
        )
        self.peer_id: str = peer_id_from_public_key(self.public_key)

    def __repr__(self) -> str:
        return f"Identity({self.peer_id})"

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """Deterministic identity. A 32-byte seed is the Ed25519 seed itself (as libp2p's
        `create_identity_from_seed`); any other length is hashed with SHA-256 first."""
        if len(seed) != _KEY_LEN:
            seed = hashlib.sha256(seed).digest()
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def for_peer(cls, run_seed: int, index: int) -> Identity:
        """The identity of peer `index` in a simulation seeded with `run_seed`."""
        return cls.from_seed(hashlib.sha256(f"p2pfed-peer:{run_seed}:{index}".encode()).digest())

    def private_seed(self) -> bytes:
        """The 32-byte Ed25519 seed (what libp2p's `create_new_key_pair(seed=...)` takes). Secret."""
        return self._key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def save(self, path: str | Path) -> None:
        """Write the key atomically, mode 0600, in libp2p's private-key file format."""
        write_atomic(Path(path), _key_protobuf(self.private_seed()), mode=0o600)

    @classmethod
    def load(cls, path: str | Path) -> Identity:
        """Read a key written by `save` or by libp2p (32-byte seed, or go-libp2p's 64-byte seed+public)."""
        path = Path(path)
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"cannot read identity file {path}: {exc}") from exc
        if len(raw) < 4 or raw[:3] != bytes([0x08, _ED25519, 0x12]) or raw[3] != len(raw) - 4:
            raise CheckpointError(f"{path} is not a libp2p Ed25519 private key file")
        data = raw[4:]
        if len(data) not in (_KEY_LEN, 2 * _KEY_LEN):
            raise CheckpointError(f"{path}: Ed25519 key of unexpected length {len(data)}")
        identity = cls(Ed25519PrivateKey.from_private_bytes(data[:_KEY_LEN]))
        if len(data) == 2 * _KEY_LEN and data[_KEY_LEN:] != identity.public_key:
            raise CheckpointError(f"{path}: public half does not match the private key")
        return identity
