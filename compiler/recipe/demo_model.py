"""The seed recipe's CNN and its supervised training on the digits set (with the compile
path's ``train_classifier``)."""

from __future__ import annotations

import torch
from torch import nn

from agent.contract import PreprocessSpec, preprocess_batch

from ..compile.datasets import Split
from ..compile.finetune import train_classifier


def digits_cnn(num_classes: int = 10) -> nn.Sequential:
    """Conv(1,32,3)→ReLU→Conv(32,64,3)→ReLU→MaxPool(2)→Flatten→Linear(9216,128)→ReLU→Linear(128,10).

    The MaxPool2d(2) before Flatten is what makes Linear(9216, 128) fit 28×28 input:
    28 → 26 → 24 after the convs, 12×12×64 = 9216 after pooling.
    """
    return nn.Sequential(
        nn.Conv2d(1, 32, 3),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(9216, 128),
        nn.ReLU(),
        nn.Linear(128, num_classes),
    )


def train_demo_model(
    train: Split, spec: PreprocessSpec, *, epochs: int = 6, seed: int = 0, progress: bool = False
) -> nn.Module:
    """The seed recipe's CNN, initialised and trained deterministically from ``seed``."""
    torch.manual_seed(seed)
    return train_classifier(digits_cnn(), train, spec, epochs=epochs, seed=seed, progress=progress)


@torch.no_grad()
def torch_accuracy(model: nn.Module, split: Split, spec: PreprocessSpec) -> float:
    logits = model.eval()(torch.from_numpy(preprocess_batch(split.images, spec)))
    return float((logits.argmax(1).numpy() == split.labels).mean())
