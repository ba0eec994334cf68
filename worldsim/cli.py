"""The `worldsim` command line: generate videos and measure speed.

worldsim generate --prompt "a forest path" --seconds 10 --out forest.mp4
worldsim generate --script "a forest [5s] | the forest at night [5s] | a city [5s#]" --out walk.mp4
worldsim bench --random wan-1.3b --device cuda --dtype bfloat16 --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch and the models load only when a command needs them
    import torch

    from worldsim.world import World

DEFAULT_MODEL = "tiny"
DTYPES = ("float32", "bfloat16", "float16")
COMMAND_GROUP = "worldsim.commands"  # entry points: callables taking the subparsers object


class CommandError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `worldsim` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # bundles are local folders; never reach a hub
    try:
        return int(args.run(args) or 0)
    except CommandError as err:
        print(f"worldsim {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"worldsim {args.command}: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="worldsim", description="An interactive world engine (infinity-RoPE)."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    generate = commands.add_parser("generate", help="generate a video from a prompt or a prompt schedule")
    model_options(generate)
    source = generate.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="one prompt for the whole video")
    source.add_argument(
        "--script",
        help="a prompt schedule, 'A [10s] | B [5s] | C [5s#]' ('|' flushes to a new prompt, '#' cuts), "
        "or a .json/.toml/.txt file holding one",
    )
    generate.add_argument("--seconds", type=float, help="video length (default: the schedule's, else 10 s)")
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--out", required=True, type=Path, help="output video (.mp4 or .gif)")
    generate.set_defaults(run=_generate)

    bench = commands.add_parser("bench", help="measure frames per second, latency and memory")
    which = bench.add_mutually_exclusive_group()
    which.add_argument("--model", help=f"bundle name or folder (default: {DEFAULT_MODEL})")
    which.add_argument(
        "--random", metavar="PRESET", help="an architecture with random weights: tiny, wan-1.3b"
    )
    bench.add_argument(
        "--checkpoint", type=Path, help="original-format generator weights to load over the model"
    )
    bench.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    bench.add_argument("--dtype", choices=DTYPES, default="float32")
    bench.add_argument("--blocks", type=int, default=8, help="blocks to generate (default: 8)")
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    bench.set_defaults(run=_bench)

    replay = commands.add_parser("replay", help="regenerate a recorded session (.jsonl) as a video")
    replay.add_argument(
        "replay_file", type=Path, help="a replay recorded by `worldsim play --record` or the env"
    )
    model_options(replay)
    replay.set_defaults(model=None)
    replay.add_argument("--out", required=True, type=Path, help="output video (.mp4 or .gif)")
    replay.set_defaults(run=_replay)

    # Commands of the layers above the engine (training, evaluation, play, replay) register
    # themselves through this entry-point group, so the engine never imports them.
    for entry in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        entry.load()(commands)
    return parser


def model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=DEFAULT_MODEL, help=f"bundle name or folder (default: {DEFAULT_MODEL})"
    )
    parser.add_argument(
        "--checkpoint", type=Path, help="original-format generator weights to load over the model"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")


def torch_setup(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    import torch

    try:
        parsed = torch.device(device)
    except RuntimeError as err:
        raise CommandError(f"unknown device {device!r}") from err
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise CommandError("--device cuda was asked for but this torch build sees no CUDA GPU")
    return parsed, getattr(torch, dtype)


def open_world(args: argparse.Namespace) -> World:
    from models.checkpoint import CheckpointError
    from worldsim.bundle import BundleError, load, random_world

    device, dtype = torch_setup(args.device, args.dtype)
    try:
        if getattr(args, "random", None):
            return random_world(args.random, device=device, dtype=dtype, seed=args.seed)
        return load(args.model or DEFAULT_MODEL, device=device, dtype=dtype, checkpoint=args.checkpoint)
    except (BundleError, CheckpointError, FileNotFoundError) as err:
        raise CommandError(str(err)) from err
    except ValueError as err:  # unknown preset
        raise CommandError(str(err)) from err


def _generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from worldsim.schedule import ScheduleError, load_schedule, schedule_from_prompt
    from worldsim.session import run_schedule
    from worldsim.video import VideoWriter

    try:
        schedule = (
            load_schedule(args.script) if args.script is not None else schedule_from_prompt(args.prompt)
        )
    except ScheduleError as err:
        raise CommandError(f"bad --script:\n{err}") from err
    if args.seconds is not None and args.seconds <= 0:
        raise CommandError("--seconds must be positive")
    _check_out(args.out)

    world = open_world(args)
    config = world.config
    frames_per_block = world.decoder.video_frames(config.block_frames, first=False)
    if args.seconds is not None:
        blocks = max(1, math.ceil(args.seconds * config.fps / frames_per_block))
    else:
        blocks = schedule.total_blocks(frames_per_block, config.fps) or math.ceil(
            10 * config.fps / frames_per_block
        )
    events = schedule.block_plan(frames_per_block, config.fps, blocks)

    session = world.session(schedule.shots[0].prompt, seed=args.seed)
    with (
        VideoWriter(args.out, fps=config.fps) as writer,
        tqdm(total=blocks, unit="block", desc="generate") as bar,
    ):
        for block in run_schedule(session, events, blocks):
            writer.write(block.frames)
            bar.set_postfix_str(("cut " if block.cut else "") + block.prompt[:40])
            bar.update()
    seconds = writer.frames / config.fps
    print(f"wrote {writer.frames} frames ({seconds:.1f} s at {config.fps:g} fps) to {args.out}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from worldsim.replay import ReplayError, read_replay, replay_blocks
    from worldsim.video import VideoWriter

    try:
        replay = read_replay(args.replay_file)
    except ReplayError as err:
        raise CommandError(str(err)) from err
    _check_out(args.out)
    if args.model is None:
        args.model = replay.header.get("source") or replay.header["bundle"]
    world = open_world(args)
    if replay.truncated:
        print(
            f"note: the last line of {args.replay_file} was cut short; replaying {len(replay.events)} blocks"
        )
    try:
        with VideoWriter(args.out, fps=world.config.fps) as writer:
            for block in tqdm(
                replay_blocks(replay, world), total=len(replay.events), unit="block", desc="replay"
            ):
                writer.write(block.frames)
    except ReplayError as err:
        raise CommandError(str(err)) from err
    print(f"wrote {writer.frames} frames of {len(replay.events)} blocks to {args.out}")
    return 0


def _check_out(out: Path) -> None:
    if out.suffix.lower() not in (".mp4", ".gif"):
        raise CommandError(f"--out must end in .mp4 or .gif, not {out.name!r}")
    if not out.parent.is_dir():
        raise CommandError(f"the folder of --out does not exist: {out.parent}")


def _bench(args: argparse.Namespace) -> int:
    from worldsim.bench import format_result, run_bench

    if args.blocks < 2:
        raise CommandError("--blocks must be at least 2")
    world = open_world(args)
    result = run_bench(world, blocks=args.blocks, seed=args.seed)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_result(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
