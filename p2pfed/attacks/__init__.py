"""Byzantine behaviours (model-, data- and network-level) that a `Peer` can run instead of honest gossip."""
