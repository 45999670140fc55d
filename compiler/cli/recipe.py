"""``edgewise train`` and ``edgewise demo``: the recipe on the bundled digits, and the whole path
once on this machine."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import arguments as arg
from ..errors import InputError
from ..failures import EXIT_FAILED
from .common import Subparsers, writable_folder


def add_train(sub: Subparsers) -> None:
    train = sub.add_parser(
        "train", help="the recipe on the bundled digits: contrastive pre-training, then fine-tuning"
    )
    train.add_argument("--out", type=arg.path, required=True, help="pickled nn.Module to write")
    train.add_argument("--labeled-fraction", type=arg.labeled_fraction, default=1.0)
    train.add_argument(
        "--pretrain-epochs", type=arg.non_negative_int, default=10, help="0 trains from scratch"
    )
    train.add_argument("--epochs", type=arg.positive_int, default=6, help="fine-tuning epochs")
    train.add_argument("--seed", type=arg.non_negative_int, default=0)
    train.set_defaults(func=run_train)


def run_train(args: argparse.Namespace) -> int:
    import torch

    from ..recipe.demo_model import torch_accuracy
    from ..recipe.digits import PREPROCESS, load_dataset
    from ..recipe.pretrain import train_recipe

    writable_folder(args.out.parent, "--out's folder", create=False)
    if args.out.is_dir():
        raise InputError(f"--out {args.out} is a folder; name the model file to write")
    data = load_dataset("digits", seed=args.seed)
    model = train_recipe(
        data.train,
        PREPROCESS,
        labeled_fraction=args.labeled_fraction,
        pretrain_epochs=args.pretrain_epochs,
        finetune_epochs=args.epochs,
        seed=args.seed,
        progress=sys.stderr.isatty(),
    )
    torch.save(model, args.out)
    print(f"held-out accuracy {torch_accuracy(model, data.test, PREPROCESS):.4f} -> {args.out}")
    return 0


def add_demo(sub: Subparsers) -> None:
    demo = sub.add_parser("demo", help="train, compile, push and run the agent end to end")
    demo.add_argument("--workdir", type=arg.path, default=Path("demo-out"))
    demo.add_argument("--digits", type=arg.positive_int, default=100)
    demo.add_argument(
        "--embedded-broker", action="store_true", help="use amqtt even if mosquitto exists"
    )
    demo.set_defaults(func=run_demo)


def run_demo(args: argparse.Namespace) -> int:
    from ..recipe import demo

    writable_folder(args.workdir, "--workdir")
    outcome = demo.run_demo(args.workdir, args.digits, args.embedded_broker)
    return 0 if outcome.results and outcome.accuracy >= 0.9 else EXIT_FAILED
