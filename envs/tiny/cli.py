"""`worldsim train` and `worldsim eval` on the command line.

Registering the commands imports nothing heavy (the training and evaluation modules load when a
command runs), so `worldsim --help` stays instant.
"""

from __future__ import annotations

import argparse
import json
import platform
from dataclasses import asdict

from envs.tiny.config import TrainConfig, field_help
from worldsim.cli import CommandError, model_options, seed_number

EVAL_FRAMES = 10_000  # the long-horizon walk of a full eval
QUICK_FRAMES = 1_000  # ... and of a quick one


def register_train(commands: argparse._SubParsersAction) -> None:
    """Add `worldsim train` to the command line: one flag per TrainConfig field, its docstring the help."""
    parser = commands.add_parser(
        "train",
        help="train the built-in tiny world model (resumable)",
        description="Train the tiny world model on the procedural world: the VAE, the latent data set, "
        "the decoder alone, then the causal transformer, and write a bundle. Each stage checkpoints "
        "into --run-dir; the same command resumes where it stopped.",
    )
    defaults, helps = TrainConfig().to_dict(), field_help(TrainConfig)
    for name, default in defaults.items():
        kind = parse_bool if isinstance(default, bool) else type(default)
        parser.add_argument(
            "--" + name.replace("_", "-"),
            type=kind,
            default=default,
            help=f"{helps[name]} (default: %(default)s)",
        )
    parser.set_defaults(run=_train)


def parse_bool(text: str) -> bool:
    """true/yes/1 or false/no/0, for boolean flags."""
    words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if text.lower() not in words:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return words[text.lower()]


def _train(args: argparse.Namespace) -> int:
    from envs.tiny.train import train
    from worldsim.device import check_device_name

    config = TrainConfig(**{name: getattr(args, name) for name in TrainConfig().to_dict()})
    if config.threads < 0:
        raise CommandError("--threads must be 0 (torch's default: every core) or more")
    if config.seed < 0:
        raise CommandError("--seed must be 0 or more")
    check_device_name(config.device)
    train(config)
    return 0


def register_eval(commands: argparse._SubParsersAction) -> None:
    """Add `worldsim eval` to the command line."""
    parser = commands.add_parser("eval", help="measure the world model against the procedural ground truth")
    model_options(parser)
    parser.add_argument(
        "--frames",
        type=int,
        help=f"long-horizon walk length (default: {EVAL_FRAMES}, with --quick {QUICK_FRAMES})",
    )
    parser.add_argument("--seed", type=seed_number, default=0)
    parser.add_argument(
        "--quick", action="store_true", help="fewer episodes and a shorter walk, for a first look"
    )
    parser.add_argument(
        "--long-horizon",
        action="store_true",
        help="measure only the long walk under every position scheme (for long walks: --frames 100000)",
    )
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--write-card", action="store_true", help="put the table into the bundle's MODEL_CARD.md"
    )
    parser.set_defaults(run=_eval)


def _eval(args: argparse.Namespace) -> int:
    from envs.tiny.evaluate import evaluate, format_table, long_horizon_report, write_card
    from worldsim.cli import open_world

    frames = args.frames if args.frames is not None else (QUICK_FRAMES if args.quick else EVAL_FRAMES)
    if frames < 100:
        raise CommandError("--frames must be at least 100")
    world = open_world(args)
    if args.long_horizon:
        if args.json or args.write_card:
            raise CommandError("--long-horizon prints a table of its own: no --json or --write-card")
        print(long_horizon_report(world, frames, seed=args.seed))
        return 0
    rows = evaluate(world, frames=frames, seed=args.seed, quick=args.quick)
    table = format_table(rows, frames)
    if args.json:
        print(json.dumps({"frames": frames, "seed": args.seed, "rows": [asdict(r) for r in rows]}, indent=2))
    else:
        print(table)
    if args.write_card:
        command = f"worldsim eval --model {args.model} --frames {frames} --seed {args.seed}"
        path = write_card(world, f"`{command}` on {platform.machine()} CPU:\n\n{table}")
        print(f"wrote the table into {path}")
    return 0
