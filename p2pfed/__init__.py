"""p2pfed: serverless peer-to-peer LoRA fine-tuning with gossip, Byzantine defences and signed updates."""

__version__ = "0.1.0"
PROTOCOL_VERSION = 2  # 2: the run digest binds Q (gossip_steps) and the round window
