"""triune-trl: V-Triune (Visual Triple Unified RL) on TRL's GRPOTrainer."""

__version__ = "0.1.0"
