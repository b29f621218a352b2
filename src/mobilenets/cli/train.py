"""``mobilenets train``: the command line of :mod:`mobilenets.train`.

The flags parse as plain numbers; their values are checked once, by the library
(:func:`mobilenets.runplan.check_args`), for this command and :func:`mobilenets.fit` alike.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..engine import RECIPES
from ..runplan import PLOTS, TrainArgs, _cpus
from .args import add_data_args, add_device_args, add_model_args, given_model_args

RECIPE_HELP = (
    "modern: SGD Nesterov, warm-up + cosine, label smoothing 0.1, EMA; long: modern + random "
    "erasing and weight decay 5e-4 for long runs on small data; fast: batch 1024, lr scaled to "
    "0.8; paper: TF RMSprop, lr 0.045 per 96 images x0.98 per epoch"
)
# The flags after the model, data and device ones: (TrainArgs field, argparse keywords).
FLAGS: list[tuple[str, dict[str, Any]]] = [
    ("batch_size", {"type": int, "help": "global batch, split across ranks (default: the recipe's, 256; fast: 1024)"}),
    ("recipe", {"choices": tuple(RECIPES), "help": RECIPE_HELP}),
    ("lr", {"type": float, "help": "peak learning rate for the global batch (default: the recipe's, scaled)"}),
    ("weight_decay", {"type": float, "help": ">= 0"}),
    ("label_smoothing", {"type": float, "help": "in [0, 1)"}),
    ("ema", {"action": argparse.BooleanOptionalAction, "help": "EMA of the weights (default: per recipe)"}),
    ("ema_decay", {"type": float, "help": "in [0, 1)"}),
    ("ema_every", {"type": int, "metavar": "K", "help": "update the EMA every K optimizer steps (default: the recipe's)"}),
    ("seed", {"type": int, "help": None}),
    ("resume", {"action": "store_true", "help": "continue the run in --out from last.ckpt"}),
    ("pretrained", {"metavar": "PATH", "help": "initial weights (torchvision/timm/mobilenets)"}),
    ("val_split", {"type": int, "metavar": "N", "help": "hold out N training images for model selection"}),
    ("max_train_samples", {"type": int, "metavar": "N", "help": None}),
    ("max_eval_samples", {"type": int, "metavar": "N", "help": "quick runs: evaluate on N images"}),
    ("sync_bn", {"action": "store_true", "help": None}),
    ("compile", {"action": "store_true", "help": "torch.compile the whole training step"}),
    ("save_every", {"type": int, "metavar": "N", "help": "write a checkpoint every N epochs (and after the last)"}),
    ("plots", {"choices": PLOTS, "help": "curves.png after the last epoch, or never"}),
    ("quiet", {"action": "store_true", "help": None}),
]  # fmt: skip


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` subcommand: model flags from ModelConfig, the rest from :data:`FLAGS`."""
    p = subparsers.add_parser(
        "train",
        help="train a model (also under torchrun)",
        description="Train a model on a dataset, in one process or many (torchrun).",
        epilog="Multi-process and multi-node: see `python -c 'import mobilenets.train; help(mobilenets.train)'`.",
    )
    add_model_args(p, name_flag=True)
    add_data_args(p, required=True, workers_default=_cpus())
    add_device_args(p)
    p.add_argument("--epochs", type=int, required=True)
    p.add_argument("--out", required=True, metavar="DIR")
    defaults = TrainArgs.__dataclass_fields__
    for name, kw in FLAGS:
        p.add_argument("--" + name.replace("_", "-"), default=defaults[name].default, **kw)
    p.set_defaults(func=_main)


def args_from_namespace(ns: argparse.Namespace, command: list[str]) -> TrainArgs:
    """The TrainArgs of a parsed ``train`` command line."""
    fields = set(TrainArgs.__dataclass_fields__) - {"command", "model_options"}
    kw = {k: v for k, v in vars(ns).items() if k in fields}
    return TrainArgs(**kw, model_options=given_model_args(ns), command=command)


def _main(args: argparse.Namespace) -> int:
    from ..train import Trainer, hooks_from_env

    hooks = hooks_from_env()  # tests' fault injection, read once at startup
    summary = Trainer(args_from_namespace(args, ["mobilenets", *sys.argv[1:]]), hooks).run()
    return 0 if summary else 1
