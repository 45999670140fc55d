"""The keyword spotter's network and its two training stages.

A four-convolution CNN over the 1×40×98 log-mel image: strided 3×3 convolutions with BatchNorm
and ReLU, the last 128×5×7 map flattened into one Linear to the 12 labels — 294 k parameters
and 14.9 M multiply-adds (half the width, 87 k and 3.8 M, found 6 % fewer keywords in the
bench's held-out stream; int8 this one takes 0.13 ms a window on one core), every op one that
onnxruntime's static int8 quantization handles (BatchNorm folds into the convolutions at
export; Dropout is gone in eval mode).

Pre-training is contrastive on unlabeled windows (two augmented hearings of a window must embed
close together, NT-Xent as in the image recipe); fine-tuning is cross-entropy on the labeled
windows, over fresh augmentations each epoch so the model hears more voices than the
synthesizer gave it. (A DS-CNN, depthwise-separable, was 6× slower to train per batch on CPU at
the same multiply-adds, too slow for a few-minute recipe.)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from agent.contract import LogMelSpec, logmel_batch

from .kws_windows import augment
from .pretrain import contrastive_loss
from .speech import LABELS

CHANNELS = (32, 64, 128, 128)
STRIDES: tuple[tuple[int, int], ...] = ((2, 2), (2, 2), (2, 2), (1, 2))  # (mel, frame)
INPUT = (40, 98)  # n_mels × frames of the recipe's LogMelSpec
Progress = Callable[[str, int, float], None]  # stage, epoch, mean loss


def kws_cnn(
    labels: int = len(LABELS), input_hw: tuple[int, int] = INPUT, head: str = "flat"
) -> nn.Sequential:
    """The spotter; ``model[:-1]`` is the body, whose output is the embedding.

    ``head="flat"`` (the default) flattens the last 128×5×7 map into the Linear: the classifier
    sees *where* in the window the sound is, so it can tell a whole word from one cut at an
    edge ("off" from the head of "often"); global average pooling's receptive field here is a
    third of a second. Measured once each on held-out voices (default size, seed 0, 12
    fine-tuning epochs): flat 0.836, pool 0.829 — close; flat also trained faster. ``"pool"``:
    global average pooling."""
    layers: list[nn.Module] = []
    previous = 1
    for channels, stride in zip(CHANNELS, STRIDES, strict=True):
        layers += [
            nn.Conv2d(previous, channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
        ]
        previous = channels
    if head == "pool":
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    else:
        layers += [nn.Flatten(), nn.Dropout(0.2)]
    with torch.no_grad():
        width = nn.Sequential(*layers).eval()(torch.zeros(1, 1, *input_hw)).shape[1]
    return nn.Sequential(*layers, nn.Linear(width, labels))


def features(x: np.ndarray, spec: LogMelSpec, chunk: int = 32) -> torch.Tensor:
    """The model's input for a batch of windows: the contract's log-mel, in small chunks (its
    float64 intermediates for 32 windows stay in cache; 512 at once ran several times slower)."""
    parts = [logmel_batch(x[i : i + chunk], spec) for i in range(0, len(x), chunk)]
    return torch.from_numpy(np.concatenate(parts) if parts else np.zeros((0, 1, 1, 1), "f4"))


def pretrain(
    model: nn.Sequential,
    x: np.ndarray,
    spec: LogMelSpec,
    bank: dict[str, np.ndarray],
    *,
    epochs: int,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 2e-3,
    temperature: float = 0.2,
    on_epoch: Progress | None = None,
) -> None:
    """Contrastive pre-training of ``model[:-1]`` on unlabeled windows, in place."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    body = model[:-1]
    head = model[-1]
    if not isinstance(head, nn.Linear):
        raise ValueError("pre-training needs a model that ends in its Linear classifier")
    embedding = head.in_features
    projection = nn.Sequential(nn.Linear(embedding, 64), nn.ReLU(), nn.Linear(64, 32))
    optimiser = torch.optim.Adam([*body.parameters(), *projection.parameters()], lr=lr)
    body.train()
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        total = 0.0
        for start in range(0, len(x), batch_size):
            batch = x[order[start : start + batch_size]]
            if len(batch) < 2:
                continue
            views = features(
                np.concatenate([augment(batch, rng, bank), augment(batch, rng, bank)]), spec
            )
            loss = contrastive_loss(projection(body(views)), temperature)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            total += loss.item() * len(batch)
        if on_epoch is not None:
            on_epoch("pre-train", epoch, total / max(len(x), 1))


def finetune(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    spec: LogMelSpec,
    bank: dict[str, np.ndarray],
    *,
    epochs: int,
    seed: int = 0,
    batch_size: int = 128,
    lr: float = 3e-3,
    augmented: float = 0.5,
    on_epoch: Progress | None = None,
) -> nn.Module:
    """Cross-entropy with Adam and a one-cycle schedule. Each epoch an ``augmented`` share of
    the windows is heard afresh through :func:`augment`; the rest as recorded."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    clean = features(x, spec)
    labels = torch.from_numpy(y)
    steps = max(1, epochs * -(-len(x) // batch_size))
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    model.train()
    for epoch in range(epochs):
        inputs = clean.clone()
        picked = np.flatnonzero(rng.random(len(x)) < augmented)
        if picked.size:
            inputs[picked] = mask(features(augment(x[picked], rng, bank), spec), rng)
        order = torch.from_numpy(rng.permutation(len(x)))
        total = 0.0
        for start in range(0, len(x), batch_size):
            idx = order[start : start + batch_size]
            loss = loss_fn(model(inputs[idx]), labels[idx])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(idx)
        if on_epoch is not None:
            on_epoch("fine-tune", epoch, total / max(len(x), 1))
    return model.eval()


def mask(
    inputs: torch.Tensor, rng: np.random.Generator, bands: int = 6, frames: int = 12
) -> torch.Tensor:
    """SpecAugment: one run of up to ``bands`` mel bands and one of up to ``frames`` frames set
    to the window's mean (0 after per-window normalisation), so that no single formant or
    instant decides the label — what a new voice changes first."""
    n, _, height, width = inputs.shape
    for i in range(n):
        b, f = int(rng.integers(0, bands + 1)), int(rng.integers(0, frames + 1))
        low, start = int(rng.integers(0, height - b + 1)), int(rng.integers(0, width - f + 1))
        inputs[i, :, low : low + b] = 0.0
        inputs[i, :, :, start : start + f] = 0.0
    return inputs


@torch.no_grad()
def probabilities(model: nn.Module, x: np.ndarray, spec: LogMelSpec) -> np.ndarray:
    """Softmax over the labels for each window (N × labels), the model in eval mode."""
    model.eval()
    inputs = features(x, spec)
    out = [torch.softmax(model(inputs[i : i + 512]), 1) for i in range(0, len(inputs), 512)]
    return torch.cat(out).numpy() if out else np.zeros((0, len(LABELS)), np.float32)


def progress_bar(total: int, enabled: bool) -> Progress:
    """An ``on_epoch`` that advances a tqdm bar (or does nothing)."""
    bar = tqdm(total=total, desc="kws", unit="epoch", disable=not enabled)

    def update(stage: str, epoch: int, loss: float) -> None:
        bar.set_postfix(stage=stage, loss=f"{loss:.3f}")
        bar.update()
        if bar.n >= total:
            bar.close()

    return update
