"""Student training: every objective on top of transformers' Trainer."""

from cotdistill.train.config import TrainConfig
from cotdistill.train.student import train

__all__ = ["TrainConfig", "train"]
