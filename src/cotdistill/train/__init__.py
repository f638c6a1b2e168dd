"""Student training: every objective on top of transformers' Trainer.

`TrainConfig` and `train` import torch and transformers, so they load on first use: the
CLI reads `train.fields` for its options without paying for them.
"""

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "TrainConfig":
        from cotdistill.train.config import TrainConfig

        return TrainConfig
    if name == "train":
        from cotdistill.train.student import train

        return train
    raise AttributeError(f"module 'cotdistill.train' has no attribute {name!r}")


__all__ = ["TrainConfig", "train"]
