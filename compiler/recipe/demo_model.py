"""The seed recipe's CNN and its supervised training on the digits set."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from agent.contract import PreprocessSpec, preprocess_batch

from .digits import Split


def digits_cnn(num_classes: int = 10) -> nn.Sequential:
    """Conv(1,32,3)→ReLU→Conv(32,64,3)→ReLU→MaxPool(2)→Flatten→Linear(9216,128)→ReLU→Linear(128,10).

    The MaxPool2d(2) before Flatten is what makes Linear(9216, 128) fit 28×28 input:
    28 → 26 → 24 after the convs, 12×12×64 = 9216 after pooling.
    """
    return nn.Sequential(
        nn.Conv2d(1, 32, 3), nn.ReLU(),
        nn.Conv2d(32, 64, 3), nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(9216, 128), nn.ReLU(),
        nn.Linear(128, num_classes),
    )  # fmt: skip


def train_classifier(
    model: nn.Module,
    train: Split,
    spec: PreprocessSpec,
    *,
    epochs: int = 4,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
) -> nn.Module:
    """Cross-entropy fine-tuning with Adam; deterministic for a given seed."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(preprocess_batch(train.images, spec))
    y = torch.from_numpy(train.labels)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    steps = epochs * -(-len(x) // batch_size)
    with tqdm(total=steps, desc="train", disable=not progress, unit="step") as bar:
        for _ in range(epochs):
            order = torch.from_numpy(rng.permutation(len(x)))
            for start in range(0, len(x), batch_size):
                idx = order[start : start + batch_size]
                optimiser.zero_grad()
                loss = loss_fn(model(x[idx]), y[idx])
                loss.backward()
                optimiser.step()
                bar.set_postfix(loss=f"{loss.item():.3f}")
                bar.update()
    return model.eval()


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
