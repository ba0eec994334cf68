"""Speed and memory of a rollout: frames per second, first-block latency, peak memory, per stage."""

from __future__ import annotations

import platform
import resource
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from worldsim.batch import BatchSession
from worldsim.session import Block
from worldsim.world import World


@dataclass(frozen=True)
class BenchResult:
    """What `worldsim bench` reports; every time is wall-clock."""

    model: str
    device: str
    device_name: str
    dtype: str
    resolution: str  # video WxH
    steps: int  # denoising steps per block (+1 context pass)
    blocks: int
    frames: int  # video frames generated, all blocks
    fps: float  # video frames per second after the first block, decode included
    first_block_ms: float
    block_ms_median: float
    transformer_ms_median: float
    decode_ms_median: float
    other_ms_median: float
    peak_mem_mb: float  # CUDA: max allocated; CPU: peak resident set size of the process
    torch: str
    # peak memory by stage, MiB: the loaded model, encoding the prompts, generating and decoding
    memory_by_stage_mb: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return asdict(self)


def run_bench(
    world: World, blocks: int = 8, prompt: str = "a walk through a forest", seed: int = 0
) -> BenchResult:
    """Generate `blocks` blocks with one prompt switch and one cut, and time each block."""
    if blocks < 2:
        raise ValueError("bench needs at least 2 blocks (the first block is timed apart)")
    device = world.model.device
    memory = {"model": _stage_peak_mb(device)}
    session = world.session(prompt, seed=seed)
    session.synchronize_timing = True
    # Encode the prompts used below before timing, as a player's scenario prompts would be.
    for text in (f"{prompt}, at night", "a city street"):
        world.text_context(text)
    memory["text"] = _stage_peak_mb(device)

    times, stages, frames = [], [], 0
    for index in tqdm(range(blocks), desc="bench", unit="block", leave=False):
        if index == blocks // 2:
            session.set_prompt(f"{prompt}, at night")
        if index == blocks // 2 + 1:
            session.cut("a city street")
        started = session.clock()
        block = session.step()
        times.append(session.clock() - started)
        stages.append(block.seconds)
        frames += block.frames.shape[0]
    memory["generation"] = _stage_peak_mb(device)

    steady = times[1:]
    steady_frames = frames - world.block_video_frames()[0]
    transformer = [s["transformer"] for s in stages[1:]]
    decode = [s["decode"] for s in stages[1:]]
    other = [t - a - b for t, a, b in zip(steady, transformer, decode, strict=True)]
    return BenchResult(
        model=world.name,
        device=device.type,
        device_name=torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else platform.processor() or "cpu",
        dtype=str(world.model.dtype).removeprefix("torch."),
        resolution=f"{world.width}x{world.height}",
        steps=len(world.config.denoising_steps),
        blocks=blocks,
        frames=frames,
        fps=steady_frames / sum(steady),
        first_block_ms=1000 * times[0],
        block_ms_median=1000 * statistics.median(steady),
        transformer_ms_median=1000 * statistics.median(transformer),
        decode_ms_median=1000 * statistics.median(decode),
        other_ms_median=1000 * statistics.median(other),
        peak_mem_mb=max(memory.values()),
        torch=torch.__version__,
        memory_by_stage_mb=memory,
    )


@dataclass(frozen=True)
class BatchBenchRow:
    """Throughput of N rollouts stepped together (batched) or one after another (as N separate envs)."""

    rollouts: int
    mode: str  # "batched": one BatchSession; "one by one": N sessions stepped in turn (a SyncVectorEnv)
    steps_per_s: float  # rollout steps (blocks, an env step each) per second, all rollouts together
    fps: float  # video frames per second, all rollouts together
    step_ms: float  # wall time of one step of all rollouts, median
    transformer_ms: float  # of which denoising and the context pass, median
    decode_ms: float  # of which decoding, median
    peak_mem_mb: float  # CUDA: max allocated in this run; CPU: the process's peak resident set so far

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        return asdict(self)


def run_batch_bench(
    world: World,
    sizes: Sequence[int],
    steps: int = 6,
    seed: int = 0,
    one_by_one: bool = True,
    prompts: Sequence[str] = ("a walk through a forest", "a walk through a forest, at night"),
) -> list[BatchBenchRow]:
    """Time `steps` steps (after two warm-up steps) of N rollouts for each N in `sizes`, batched and
    (with `one_by_one`) as N sessions stepped in turn. Rollout r changes its prompt every fourth
    step, at its own phase, so flushed and unflushed rollouts share the batch as they do in an env.
    """
    if steps < 1 or not sizes or min(sizes) < 1:
        raise ValueError("the batch bench needs at least one step and rollouts >= 1")
    device = world.model.device
    rows = []
    for size in sizes:
        modes = ["batched", "one by one"] if one_by_one else ["batched"]
        for mode in modes:
            _stage_peak_mb(device)
            seeds = [seed + r for r in range(size)]
            set_prompt, step_all = _rollouts(world, mode == "batched", prompts[0], seeds)
            times, transformer, decode, frames = [], [], [], 0
            for step in tqdm(range(steps + 2), desc=f"{mode} x{size}", unit="step", leave=False):
                prompt = prompts[(step // 4) % len(prompts)]
                started = time.perf_counter()
                for r in range(size):
                    if step > 0 and (step + r) % 4 == 0:
                        set_prompt(r, prompt)
                blocks = step_all()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if step >= 2:
                    times.append(time.perf_counter() - started)
                    # a batch's blocks share one step's stage times; sessions' add up
                    seconds = [blocks[0].seconds] if mode == "batched" else [b.seconds for b in blocks]
                    transformer.append(sum(s["transformer"] for s in seconds))
                    decode.append(sum(s["decode"] for s in seconds))
                    frames += sum(b.frames.shape[0] for b in blocks)
            total = sum(times)
            rows.append(
                BatchBenchRow(
                    rollouts=size,
                    mode=mode,
                    steps_per_s=size * steps / total,
                    fps=frames / total,
                    step_ms=1000 * statistics.median(times),
                    transformer_ms=1000 * statistics.median(transformer),
                    decode_ms=1000 * statistics.median(decode),
                    peak_mem_mb=_stage_peak_mb(device),
                )
            )
    return rows


def _rollouts(
    world: World, batched: bool, prompt: str, seeds: Sequence[int]
) -> tuple[Callable[[int, str], None], Callable[[], list[Block]]]:
    """Rollouts from `prompt`, one per seed, in one BatchSession or as separate sessions: how to set
    rollout r's prompt, and how to step them all (one Block each)."""
    if batched:
        batch = BatchSession(world, [prompt] * len(seeds), seeds)
        return batch.set_prompt, batch.step
    sessions = [world.session(prompt, seed=s) for s in seeds]

    def set_prompt(row: int, text: str) -> None:
        sessions[row].set_prompt(text)

    def step_all() -> list[Block]:
        return [session.step() for session in sessions]

    return set_prompt, step_all


def format_batch_result(rows: Sequence[BatchBenchRow]) -> str:
    """A table of the batch bench, one line per (rollouts, mode)."""
    header = f"{'rollouts':>8}  {'mode':<10}  {'steps/s':>8}  {'frames/s':>8}  {'step ms':>8}  "
    header += f"{'transf. ms':>10}  {'decode ms':>9}  {'peak MiB':>8}"
    lines = [header]
    for row in rows:
        lines.append(
            f"{row.rollouts:>8}  {row.mode:<10}  {row.steps_per_s:>8.1f}  {row.fps:>8.1f}  "
            f"{row.step_ms:>8.0f}  {row.transformer_ms:>10.0f}  {row.decode_ms:>9.0f}  "
            f"{row.peak_mem_mb:>8.0f}"
        )
    return "\n".join(lines)


def _stage_peak_mb(device: torch.device) -> float:
    """The peak memory since the last call (CUDA: allocated on the device), MiB; on a CPU the process's
    peak resident set so far (it cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        torch.cuda.reset_peak_memory_stats(device)
        return peak
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def format_result(result: BenchResult) -> str:
    """A small human-readable table."""
    rows = [
        ("model", result.model),
        ("device", f"{result.device} ({result.device_name})"),
        ("dtype", result.dtype),
        ("video", f"{result.resolution}, {result.steps} steps + context pass"),
        ("blocks / frames", f"{result.blocks} / {result.frames}"),
        ("fps (after first block)", f"{result.fps:.1f}"),
        ("first block", f"{result.first_block_ms:.0f} ms"),
        ("block, median", f"{result.block_ms_median:.0f} ms"),
        ("  transformer", f"{result.transformer_ms_median:.0f} ms"),
        ("  decode", f"{result.decode_ms_median:.0f} ms"),
        ("  other", f"{result.other_ms_median:.0f} ms"),
        ("peak memory", f"{result.peak_mem_mb:.0f} MiB"),
        *((f"  {stage}", f"{mb:.0f} MiB") for stage, mb in result.memory_by_stage_mb.items()),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
