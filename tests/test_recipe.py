"""The recipe: contrastive pre-training on unlabeled images, then fine-tuning on few labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from compiler.cli import main
from compiler.recipe.demo_model import digits_cnn
from compiler.recipe.digits import PREPROCESS
from compiler.recipe.pretrain import BODY_DEPTH, labeled_subset, pretrain_body, train_recipe


def test_labeled_subset_is_stratified_and_sized(digits) -> None:  # type: ignore[no-untyped-def]
    subset = labeled_subset(digits.train, 0.1, seed=0)
    assert len(subset.labels) == round(0.1 * len(digits.train.labels))
    counts = np.bincount(subset.labels, minlength=10)
    assert counts.min() >= 10 and counts.max() <= 16  # ~14 per class
    assert labeled_subset(digits.train, 1.0) is digits.train


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_bad_fraction_is_named(digits, fraction: float) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=str(fraction)):
        labeled_subset(digits.train, fraction)


def test_pretraining_lowers_its_loss_and_leaves_the_head(digits) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = digits_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses: list[float] = []
    pretrain_body(
        model, digits.train.images[:256], PREPROCESS, epochs=3, progress=False,
        on_epoch=lambda _epoch, loss: losses.append(loss),
    )  # fmt: skip
    assert losses[-1] < losses[0]
    after = model.state_dict()
    body = {k for k in after if int(k.split(".")[0]) < BODY_DEPTH}
    assert all(not torch.equal(before[k], after[k]) for k in body)
    head = set(after) - body
    assert head and all(torch.equal(before[k], after[k]) for k in head)


def test_recipe_is_deterministic_for_a_seed(digits) -> None:  # type: ignore[no-untyped-def]
    small = type(digits.train)(digits.train.images[:200], digits.train.labels[:200])

    def run() -> dict[str, torch.Tensor]:
        return train_recipe(
            small, PREPROCESS, labeled_fraction=0.5, pretrain_epochs=1, finetune_epochs=1,
            seed=3, progress=False,
        ).state_dict()  # fmt: skip

    first, second = run(), run()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_cli_train_writes_a_checkpoint_the_compiler_takes(
    tmp_path: Path, signing_keys, capsys
) -> None:  # type: ignore[no-untyped-def]
    model = tmp_path / "model.pt"
    args = ["train", "--out", str(model), "--labeled-fraction", "0.5", "--pretrain-epochs", "1",
            "--epochs", "2"]  # fmt: skip
    assert main(args) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    out = tmp_path / "pkgs"
    compile_args = [
        "compile", str(model), "--name", "d", "--version", "1.0.0", "--key", str(signing_keys[0]),
        "--out", str(out), "--no-html", "--max-accuracy-drop", "5",
    ]  # fmt: skip
    assert main(compile_args) == 0, capsys.readouterr().err
    assert (out / "d-1.0.0" / "model.onnx").exists()
