"""The recipe on digits with 10% of the labels: contrastive pre-training on all training images
then fine-tuning, against the same fine-tuning from scratch (same labels, epochs and seed).

    .venv/bin/python bench/recipe.py

Prints a table, then the figures as one JSON object on the last line.
"""

from __future__ import annotations

import json
import statistics
import sys

import torch

from compiler.recipe.demo_model import torch_accuracy
from compiler.recipe.digits import PREPROCESS, load_dataset
from compiler.recipe.pretrain import labeled_subset, train_recipe

SEEDS = (0, 1, 2)
FRACTION = 0.1


def main() -> int:
    torch.set_num_threads(2)
    data = load_dataset("digits", seed=0)
    rows = []
    for seed in SEEDS:
        arms = {
            name: torch_accuracy(
                train_recipe(
                    data.train, PREPROCESS, labeled_fraction=FRACTION, seed=seed, progress=False,
                    pretrain_epochs=epochs,
                ),
                data.test,
                PREPROCESS,
            )
            for name, epochs in (("pretrained", 10), ("scratch", 0))
        }  # fmt: skip
        rows.append((seed, arms["pretrained"], arms["scratch"]))
    labeled = len(labeled_subset(data.train, FRACTION).labels)
    print(f"digits, {labeled} labeled of {len(data.train.labels)} training images, 360 held out")
    print(f"{'seed':>4}{'pre-train + fine-tune':>24}{'scratch':>10}{'gain (pt)':>11}")
    for seed, pre, scratch in rows:
        print(f"{seed:>4}{pre:>24.4f}{scratch:>10.4f}{(pre - scratch) * 100:>11.2f}")
    pre_mean = statistics.mean(r[1] for r in rows)
    scratch_mean = statistics.mean(r[2] for r in rows)
    print(
        f"{'mean':>4}{pre_mean:>24.4f}{scratch_mean:>10.4f}{(pre_mean - scratch_mean) * 100:>11.2f}"
    )
    figures = {
        "labeled_fraction": FRACTION,
        "labeled_images": labeled,
        "seeds": list(SEEDS),
        "pretrain_finetune_accuracy": round(pre_mean, 4),
        "scratch_accuracy": round(scratch_mean, 4),
        "gain_points": round((pre_mean - scratch_mean) * 100, 2),
        "per_seed": [{"seed": s, "pretrained": p, "scratch": c} for s, p, c in rows],
    }
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
