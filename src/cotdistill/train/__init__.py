"""Student training: objectives on top of transformers' Trainer."""

from cotdistill.train.sft_config import SFTConfig
from cotdistill.train.student import student_dir, train

__all__ = ["SFTConfig", "student_dir", "train"]
