from __future__ import annotations

import stat

import pytest

from p2pfed.errors import CheckpointError
from p2pfed.wire import Identity, public_key_from_peer_id, verify


def test_peer_id_matches_libp2p() -> None:
    from libp2p.identity_utils import create_identity_from_seed
    from libp2p.peer.id import ID

    for index in range(5):
        identity = Identity.for_peer(42, index)
        key_pair = create_identity_from_seed(identity.private_seed())
        assert identity.peer_id == ID.from_pubkey(key_pair.public_key).to_base58()
        assert identity.peer_id.startswith("12D3KooW")
    fresh = Identity.generate()
    from libp2p.crypto.ed25519 import Ed25519PublicKey as Libp2pPublicKey

    assert ID.from_pubkey(Libp2pPublicKey.from_bytes(fresh.public_key)).to_base58() == fresh.peer_id


def test_seeded_identities_are_deterministic_and_distinct() -> None:
    assert Identity.for_peer(1, 0).peer_id == Identity.for_peer(1, 0).peer_id
    ids = {Identity.for_peer(1, i).peer_id for i in range(20)} | {Identity.for_peer(2, 0).peer_id}
    assert len(ids) == 21
    assert Identity.from_seed(b"short").peer_id == Identity.from_seed(b"short").peer_id


def test_verifier_needs_only_the_peer_id() -> None:
    alice, bob = Identity.for_peer(3, 0), Identity.for_peer(3, 1)
    signature = alice.sign(b"hello")
    assert verify(alice.peer_id, b"hello", signature)
    assert not verify(bob.peer_id, b"hello", signature)
    assert not verify(alice.peer_id, b"hellO", signature)
    assert not verify("not-a-peer-id", b"hello", signature)
    assert not verify(alice.peer_id, b"hello", signature[:10])
    with pytest.raises(ValueError):
        public_key_from_peer_id(
            "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N"
        )  # RSA/sha256 style ID


def test_save_load_round_trip_is_private_and_libp2p_compatible(tmp_path) -> None:
    from libp2p.identity_utils import load_identity, save_identity
    from libp2p.peer.id import ID

    identity = Identity.for_peer(9, 9)
    path = tmp_path / "keys" / "peer.key"
    identity.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert Identity.load(path).peer_id == identity.peer_id
    assert ID.from_pubkey(load_identity(path).public_key).to_base58() == identity.peer_id

    other = tmp_path / "libp2p.key"
    from libp2p.crypto.ed25519 import create_new_key_pair

    key_pair = create_new_key_pair()
    save_identity(key_pair, other)
    assert Identity.load(other).peer_id == ID.from_pubkey(key_pair.public_key).to_base58()
    identity.save(path)  # overwrite in place, atomically
    assert sorted(p.name for p in path.parent.iterdir()) == ["peer.key"]


def test_loading_a_bad_file_is_a_checkpoint_error(tmp_path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"\x08\x01\x12\x05hello")
    with pytest.raises(CheckpointError):
        Identity.load(bad)
    with pytest.raises(CheckpointError):
        Identity.load(tmp_path / "missing.key")
