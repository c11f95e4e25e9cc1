"""The one loop shared by every task: train / evaluate / predict, checkpoints, logging, DDP."""
from linglo.engine.trainer import evaluate, predict, train

__all__ = ["evaluate", "predict", "train"]
