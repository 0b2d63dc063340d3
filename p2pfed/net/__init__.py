"""Transports: how signed envelopes travel between peers. The only package that may import libp2p.

Never imports torch or peft (a test enforces it).
"""
