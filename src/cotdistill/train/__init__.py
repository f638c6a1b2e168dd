"""Student training: every objective on top of transformers' Trainer."""

from cotdistill.train.config import TrainConfig
from cotdistill.train.student import student_dir, train

__all__ = ["TrainConfig", "student_dir", "train"]
