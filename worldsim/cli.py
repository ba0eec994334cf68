"""The `worldsim` command line: generate videos, replay sessions, measure speed and soak a model.

    worldsim generate --prompt "a forest path" --seconds 10 --out forest.mp4
    worldsim generate --script "a forest [5s] | the forest at night [5s] | a city [5s#]" --out walk.mp4
    worldsim replay run.jsonl --out run.mp4
    worldsim bench --random wan-1.3b --device cuda --dtype bfloat16 --json
    worldsim soak --blocks 3500

Parsing the command line imports nothing heavy: torch and diffusers load when a command runs, so
``--help`` and argument errors answer at once. Bad input of any kind is a one-line error (exit 2);
a run that fails on its way (NaN latents, a replay that does not match) exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any

from worldsim.config import PROMPT_CHANGES
from worldsim.device import DTYPES, check_device_name

if TYPE_CHECKING:  # torch and the models load only when a command needs them
    from worldsim.scenario import Scenario
    from worldsim.world import World

DEFAULT_MODEL = "tiny"
COMMAND_GROUP = "worldsim.commands"  # entry points: callables taking the subparsers object
VIDEO_SUFFIXES = (".mp4", ".gif")
# The errors bad input raises, by module: a command can only have raised those of modules it imported.
USER_ERRORS = (
    ("worldsim.device", "DeviceError"),
    ("worldsim.image", "ImageError"),
    ("worldsim.bundle", "BundleError"),
    ("models.checkpoint", "CheckpointError"),
    ("models.text", "TextEncoderError"),
    ("worldsim.schedule", "ScheduleError"),
    ("worldsim.scenario", "ScenarioError"),
    ("worldsim.replay", "ReplayError"),
)
RUN_FAILURES = (("worldsim.session", "NonFiniteError"), ("worldsim.replay", "ReplayMismatch"))


class CommandError(Exception):
    """A user-facing error: printed without a traceback, exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `worldsim` console script."""
    parser = _parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # bundles are local folders; never reach a hub
    return run_command(f"worldsim {args.command}", args.run, args)


def run_command(name: str, command: Callable[[argparse.Namespace], Any], args: argparse.Namespace) -> int:
    """Run a command, turning bad input into a one-line error (exit 2) and a failed run into exit 1."""
    try:
        return int(command(args) or 0)
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        status = _status_of(err)
        if status is None:
            raise
        print(f"{name}: error: {err}", file=sys.stderr)
        return status


def _status_of(error: Exception) -> int | None:
    """2 for bad input, 1 for a run that failed on its way, None for a bug (shown with its traceback)."""
    for status, kinds in ((1, RUN_FAILURES), (2, USER_ERRORS)):
        for module, name in kinds:
            kind = getattr(sys.modules.get(module), name, None)
            if isinstance(kind, type) and isinstance(error, kind):
                return status
    return 2 if isinstance(error, CommandError) else None


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
    generate.add_argument("--seed", type=seed_number, default=0)
    generate.add_argument(
        "--image", type=Path, metavar="FILE", help="start from this picture (PNG, JPEG, ...)"
    )
    generate.add_argument("--out", required=True, type=Path, help="output video (.mp4 or .gif)")
    generate.set_defaults(run=_generate)

    bench = commands.add_parser("bench", help="measure frames per second, latency and memory")
    model_options(bench, random=True)
    bench.add_argument("--blocks", type=int, help="blocks to generate (default: 8)")
    bench.add_argument("--seed", type=seed_number, default=0)
    bench.add_argument(
        "--batch",
        type=int,
        nargs="+",
        metavar="N",
        help="measure N rollouts stepped together (the vector env's engine) against N sessions stepped in "
        "turn (a SyncVectorEnv), for each N given: env steps/s, frames/s, memory",
    )
    bench.add_argument(
        "--steps", type=int, help="timed steps per N with --batch (default: 6, after 2 warm-up)"
    )
    bench.add_argument("--json", action="store_true", help="print the result as JSON")
    bench.set_defaults(run=_bench)

    soak = commands.add_parser(
        "soak",
        help="a long rollout with random prompt changes and cuts: NaNs, positions and memory over time",
    )
    model_options(soak, random=True)
    soak.add_argument("--blocks", type=int, default=3500, help="blocks to generate (default: 3500)")
    soak.add_argument("--seed", type=seed_number, default=0)
    soak.add_argument("--every", type=int, default=100, help="blocks between memory readings (default: 100)")
    soak.add_argument("--json", type=Path, metavar="FILE", help="also write the readings as JSON")
    soak.set_defaults(run=_soak)

    replay = commands.add_parser("replay", help="regenerate a recorded session (.jsonl) as a video")
    replay.add_argument(
        "replay_file", type=Path, help="a replay recorded by `worldsim play --record` or the env"
    )
    model_options(replay)
    replay.set_defaults(model=None)
    replay.add_argument("--out", required=True, type=Path, help="output video (.mp4 or .gif)")
    replay.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="regenerate without checking each block against the hash the recording holds",
    )
    replay.set_defaults(run=_replay)

    inspect = commands.add_parser(
        "inspect", help="say what a model folder or weights file is, without loading it (run this first)"
    )
    inspect.add_argument("path", type=Path, help="a folder (bundle, diffusers, original Wan2.1) or a file")
    inspect.set_defaults(run=_inspect)

    # Commands of the layers above the engine (training, evaluation, play) register themselves
    # through this entry-point group, so the engine never imports them.
    for entry in sorted(entry_points(group=COMMAND_GROUP), key=lambda e: e.name):
        entry.load()(commands)
    return parser


def threads_option(parser: argparse.ArgumentParser) -> None:
    """Add --threads (torch's CPU threads) to a command's parser."""
    parser.add_argument(
        "--threads",
        type=_positive_int,
        help="CPU threads for torch (default: one per two cores, so a busy machine does not stall it)",
    )


def model_options(parser: argparse.ArgumentParser, random: bool = False) -> None:
    """Add the options that choose and place a model: --model (or --random), --checkpoint, --device..."""
    if random:
        which = parser.add_mutually_exclusive_group()
        which.add_argument("--model", help=f"bundle name or folder (default: {DEFAULT_MODEL})")
        which.add_argument(
            "--random", metavar="PRESET", help="an architecture with random weights: tiny, wan-1.3b"
        )
    else:
        parser.add_argument(
            "--model", default=DEFAULT_MODEL, help=f"bundle name or folder (default: {DEFAULT_MODEL})"
        )
    weights = parser.add_argument_group("Wan weights (see `worldsim inspect`)")
    weights.add_argument(
        "--checkpoint", type=Path, help="generator weights to load over the model (a Self-Forcing-family .pt)"
    )
    weights.add_argument(
        "--checkpoint-entry",
        choices=("generator", "generator_ema"),
        help="which weights of a checkpoint that holds both (default: what its family's inference loads)",
    )
    weights.add_argument(
        "--preset",
        metavar="FAMILY",
        help="the inference settings of a family: self-forcing, causal-forcing, causal-forcing-framewise, "
        "rolling-forcing, causvid, longlive, infinite-forcing (default: detected from the checkpoint's name)",
    )
    weights.add_argument(
        "--lora", type=Path, help="a LoRA adapter merged into the weights (LongLive's lora.pt)"
    )
    weights.add_argument(
        "--text-offload",
        choices=("off", "swap", "cpu"),
        help="keep the text encoder off the GPU between prompts: swap (bring it back for a new prompt; "
        "the default on CUDA), cpu (encode there), off",
    )
    weights.add_argument(
        "--decoder", default="vae", help="vae (default), or taehv:PATH to decode with TAEHV (taew2_1.pth)"
    )
    weights.add_argument(
        "--size", type=_video_size, metavar="WxH", help="video size of a Wan folder (default: 832x480)"
    )
    parser.add_argument(
        "--on-prompt-change",
        choices=tuple(PROMPT_CHANGES),
        help="how a new prompt is taken in: flush (KV Flush, the default), keep (only the text renewed) "
        "or recache (the held frames re-encoded under it, LongLive's)",
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32")
    threads_option(parser)


def seed_number(text: str) -> int:
    """A --seed: a whole number from 0 to 2**63 - 1 (what torch's generators take)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"must be from 0 to 2**63 - 1, got {value}")
    return value


def _video_size(text: str) -> tuple[int, int]:
    """'832x480' -> (height 480, width 832)."""
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit() or int(width) < 1 or int(height) < 1:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 832x480, got {text!r}")
    return int(height), int(width)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def open_world(args: argparse.Namespace) -> World:
    """The world the options name, on their device and thread count; CommandError if it will not open."""
    from worldsim.bundle import LoadOptions, load, random_world
    from worldsim.device import parse_device, parse_dtype, use_threads

    device, dtype = parse_device(args.device), parse_dtype(args.dtype)
    use_threads(getattr(args, "threads", None))
    if getattr(args, "random", None):
        try:
            return answering(random_world(args.random, device=device, dtype=dtype, seed=args.seed), args)
        except ValueError as err:  # an unknown preset
            raise CommandError(str(err)) from err
    options = LoadOptions(
        checkpoint=getattr(args, "checkpoint", None),
        preset=getattr(args, "preset", None),
        checkpoint_entry=getattr(args, "checkpoint_entry", None),
        lora=getattr(args, "lora", None),
        text_offload=getattr(args, "text_offload", None),
        decoder=getattr(args, "decoder", "vae"),
        size=getattr(args, "size", None),
    )
    try:
        world = load(args.model or DEFAULT_MODEL, device=device, dtype=dtype, options=options)
    except FileNotFoundError as err:
        raise CommandError(str(err)) from err
    for note in world.notes:
        print(f"note: {note}", file=sys.stderr)
    return answering(world, args)


def answering(world: World, args: argparse.Namespace) -> World:
    """The world with its engine answering a prompt change as ``--on-prompt-change`` says (if given)."""
    answer = getattr(args, "on_prompt_change", None)
    if answer is None:
        return world
    return dataclasses.replace(world, config=world.config.replace(**PROMPT_CHANGES[answer]))


def open_scenario(requested: Path | str | None, world: World) -> Scenario:
    """The scenario asked for (a file or a built-in name), else the one the model's bundle ships."""
    from worldsim.scenario import load_scenario

    if requested is not None:
        return load_scenario(requested)
    if world.scenario is None:
        raise CommandError(
            f"the model {world.name!r} ships no scenario; "
            "pass one with --scenario FILE.toml (or a built-in name)"
        )
    return load_scenario(world.scenario)


def check_output(path: Path, suffixes: Sequence[str] = VIDEO_SUFFIXES, flag: str = "--out") -> None:
    """Refuse an output file that cannot be written, before any work is done (a model loaded, ...)."""
    if suffixes and path.suffix.lower() not in suffixes:
        raise CommandError(f"{flag} must end in {' or '.join(suffixes)}, not {path.name!r}")
    if not path.parent.is_dir():
        raise CommandError(f"the folder of {flag} does not exist: {path.parent}")
    if path.is_dir():
        raise CommandError(f"{flag} {path} is a folder, not a file")
    existed = path.exists()
    try:
        with path.open("ab"):
            pass
    except OSError as err:
        raise CommandError(f"cannot write {flag} {path}: {err.strerror or err}") from err
    if not existed:
        path.unlink()


def _generate(args: argparse.Namespace) -> int:
    from worldsim.image import read_image
    from worldsim.schedule import BlockTiming, ScheduleError, load_schedule, schedule_from_prompt

    check_device_name(args.device)
    if args.seconds is not None and not (math.isfinite(args.seconds) and args.seconds > 0):
        raise CommandError(f"--seconds must be a positive number, not {args.seconds}")
    try:
        schedule = (
            load_schedule(args.script) if args.script is not None else schedule_from_prompt(args.prompt)
        )
    except ScheduleError as err:  # its message shows the place in the script, on lines of its own
        raise CommandError(f"bad --script:\n{err}") from err
    check_output(args.out)
    image = read_image(args.image) if args.image is not None else None

    from tqdm import tqdm

    from worldsim.session import run_schedule
    from worldsim.video import VideoWriter

    world = open_world(args)
    config = world.config
    seconds = args.seconds if args.seconds is not None or not schedule.open_ended else 10.0
    timing = BlockTiming(*world.block_video_frames(image=image is not None), config.fps)
    plan = schedule.plan(timing, seconds)
    session = world.session(schedule.shots[0].prompt, seed=args.seed, start_image=image)
    with (
        VideoWriter(args.out, fps=config.fps) as writer,
        tqdm(total=plan.blocks, unit="block", desc="generate") as bar,
    ):
        for block in run_schedule(session, plan.events, plan.blocks):
            writer.write(block.frames[: plan.frames - writer.frames])  # the last block may run over
            bar.set_postfix_str(("cut " if block.cut else "") + block.prompt[:40])
            bar.update()
    length = f"{writer.frames / config.fps:.2f} s at {config.fps:g} fps"
    print(f"wrote {writer.frames} frames ({length}) to {args.out}")
    return 0


def _replay(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from worldsim.replay import changed_settings, read_replay, replay_blocks
    from worldsim.video import VideoWriter

    check_device_name(args.device)
    if args.on_prompt_change is not None:
        raise CommandError("a replay runs with the engine settings it recorded: drop --on-prompt-change")
    replay = read_replay(args.replay_file)
    check_output(args.out)
    if args.model is None:
        args.model = replay.header.get("source") or replay.header["bundle"]
    if args.threads is None:  # CPU results depend on the thread count, bit for bit
        args.threads = replay.header.get("threads")
    world = open_world(args)
    for setting in changed_settings(replay, world):
        print(f"note: the recording ran with {setting}; replaying with it")
    if replay.truncated:
        print(
            f"note: the last line of {args.replay_file} was cut short; replaying {len(replay.events)} blocks"
        )
    hashed = any(event.frames is not None for event in replay.events)
    if args.verify and not hashed and "batch" in replay.header:
        print(
            f"note: {args.replay_file} was recorded in a batch of {replay.header['batch']['rollouts']} "
            "rollouts, whose float rounding differs from one session's, so it holds no frame hashes; "
            "replaying unchecked"
        )
    elif args.verify and not hashed:
        print(f"note: {args.replay_file} holds no frame hashes (a version 1 replay); replaying unchecked")
    with VideoWriter(args.out, fps=world.config.fps) as writer:
        blocks = replay_blocks(replay, world, verify=args.verify)
        for block in tqdm(blocks, total=len(replay.events), unit="block", desc="replay"):
            writer.write(block.frames)
    checked = "each block matched its recorded hash" if args.verify and hashed else "not checked"
    print(f"wrote {writer.frames} frames of {len(replay.events)} blocks to {args.out} ({checked})")
    return 0


def _bench(args: argparse.Namespace) -> int:
    if args.steps is not None and args.batch is None:
        raise CommandError("--steps goes with --batch (without it, --blocks sets the length)")
    if args.blocks is not None and args.batch is not None:
        raise CommandError("--blocks does not go with --batch (--steps sets its length)")
    blocks = 8 if args.blocks is None else args.blocks
    if blocks < 2:
        raise CommandError("--blocks must be at least 2")
    steps = 6 if args.steps is None else args.steps
    if args.batch is not None and (min(args.batch) < 1 or steps < 1):
        raise CommandError("--batch sizes and --steps must be at least 1")
    check_device_name(args.device)
    from worldsim.bench import format_batch_result, format_result, run_batch_bench, run_bench

    world = open_world(args)
    if args.batch is not None:
        rows = run_batch_bench(world, sorted(args.batch), steps=steps, seed=args.seed)
        text = format_batch_result(rows)
        print(json.dumps([row.to_dict() for row in rows], indent=2) if args.json else text)
        return 0
    result = run_bench(world, blocks=blocks, seed=args.seed)
    print(json.dumps(result.to_dict(), indent=2) if args.json else format_result(result))
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from worldsim.inspect import inspect_path

    report = inspect_path(args.path)
    print(report.text())
    return 0 if report.usable else 1


def _soak(args: argparse.Namespace) -> int:
    if args.blocks < 1 or args.every < 1:
        raise CommandError("--blocks and --every must be at least 1")
    check_device_name(args.device)
    if args.json is not None:
        check_output(args.json, (".json",), "--json")
    from worldsim.soak import format_soak, run_soak

    world = open_world(args)
    result = run_soak(world, blocks=args.blocks, seed=args.seed, every=args.every)
    print(format_soak(result))
    if args.json is not None:
        args.json.write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
