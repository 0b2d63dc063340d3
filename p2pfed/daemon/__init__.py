"""The network daemon behind `p2pfed join`: one `Peer` on the libp2p transport, with checkpoints,
metrics and a status file. Sits beside `cli/` and `sims/` at the top of the layer stack."""
