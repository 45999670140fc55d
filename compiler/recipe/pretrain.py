"""The recipe the product grew from: self-supervised pre-training on unlabeled images, then
fine-tuning on a few labels.

Pre-training is contrastive (SimCLR-style): two random affine+noise views of each image must map
to nearby embeddings and away from the other images in the batch. It trains the CNN's body — the
convolutional encoder and the first Linear — which holds almost all its weights. (A masked
reconstruction objective was measured first; on digits with 10% labels it lowered accuracy, see
bench/recipe.py in the README.)
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from agent.contract import PreprocessSpec, preprocess_batch

from ..compile.datasets import Split
from ..compile.finetune import train_classifier
from .demo_model import digits_cnn

BODY_DEPTH = 8  # Conv, ReLU, Conv, ReLU, MaxPool, Flatten, Linear(9216,128), ReLU
MAX_ROTATION = math.radians(12)


def labeled_subset(train: Split, fraction: float, seed: int = 0) -> Split:
    """A stratified share of the labeled images (at least one per class)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"labeled fraction must be in (0, 1], got {fraction}")
    if fraction == 1:
        return train
    from sklearn.model_selection import train_test_split

    classes = len(np.unique(train.labels))
    size = max(classes, round(len(train.labels) * fraction))
    x, _, y, _ = train_test_split(
        train.images, train.labels, train_size=size, random_state=seed, stratify=train.labels
    )
    return Split(x, np.asarray(y))


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A random view: rotation ±12°, scale ±10%, shift ±12%, gaussian noise."""
    n = x.shape[0]

    def uniform(span: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) - 0.5) * 2 * span

    angle, scale = uniform(MAX_ROTATION), 1 + uniform(0.1)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack(
        [torch.stack([cos, -sin, uniform(0.125)], 1), torch.stack([sin, cos, uniform(0.125)], 1)], 1
    )
    background = x.amin()  # pad with the background, not with zero (inputs are normalised)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    view = F.grid_sample(x - background, grid, align_corners=False) + background
    return view + 0.1 * torch.randn(x.shape, generator=generator)


def contrastive_loss(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent over a batch of 2n embeddings where rows i and i+n are views of one image."""
    z = F.normalize(z, dim=1)
    n = z.shape[0] // 2
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(similarity, positives)


def pretrain_body(
    model: nn.Sequential,
    images: np.ndarray,
    spec: PreprocessSpec,
    *,
    epochs: int,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 1e-3,
    temperature: float = 0.2,
    progress: bool = False,
    on_epoch: Callable[[int, float], None] | None = None,
) -> nn.Sequential:
    """Contrastive pre-training of ``model[:BODY_DEPTH]`` on unlabeled images, in place; the
    output layer is not touched. ``on_epoch(epoch, mean_loss)`` sees the loss fall."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    body = model[:BODY_DEPTH]
    projection = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64))
    x = torch.from_numpy(preprocess_batch(images, spec))
    optimiser = torch.optim.Adam([*body.parameters(), *projection.parameters()], lr=lr)
    body.train()
    steps = -(-len(x) // batch_size)
    with tqdm(total=epochs * steps, desc="pre-train", disable=not progress, unit="step") as bar:
        for epoch in range(epochs):
            order = torch.randperm(len(x), generator=generator)
            total = 0.0
            for start in range(0, len(x), batch_size):
                batch = x[order[start : start + batch_size]]
                views = torch.cat([augment(batch, generator), augment(batch, generator)])
                loss = contrastive_loss(projection(body(views)), temperature)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += loss.item() * len(batch)
                bar.update()
            if on_epoch is not None:
                on_epoch(epoch, total / len(x))
    return model.eval()


def train_recipe(
    train: Split,
    spec: PreprocessSpec,
    *,
    labeled_fraction: float = 0.1,
    pretrain_epochs: int = 10,
    finetune_epochs: int = 30,
    seed: int = 0,
    progress: bool = False,
) -> nn.Module:
    """Pre-train on every training image (labels unused), then fine-tune with the recipe's
    cross-entropy on a stratified ``labeled_fraction`` of them."""
    torch.manual_seed(seed)
    model = digits_cnn()
    if pretrain_epochs > 0:
        pretrain_body(
            model, train.images, spec, epochs=pretrain_epochs, seed=seed, progress=progress
        )
    labeled = labeled_subset(train, labeled_fraction, seed)
    return train_classifier(
        model, labeled, spec, epochs=finetune_epochs, seed=seed, progress=progress
    )
