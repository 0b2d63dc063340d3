"""Byzantine-robust aggregation: pure functions on stacked flat vectors, Bristle filter, reputation.

Never imports trio or libp2p (a test enforces it).
"""
