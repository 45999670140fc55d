"""Supervised fine-tuning of a classifier: how a pruned model recovers its accuracy, and the
recipe's last step."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from agent.contract import AnySpec, preprocess_batch

from .datasets import Split


def train_classifier(
    model: nn.Module,
    train: Split,
    spec: AnySpec,
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
