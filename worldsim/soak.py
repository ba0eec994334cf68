"""`worldsim soak`: a long rollout with random prompt changes and cuts, checked block by block.

Every block must come out finite (the session refuses NaN or Inf latents), its temporal positions
must stay inside the window (``worldsim.positions.largest_position``, plus ``cut_delta`` on a cut),
and memory must stay flat: the cache and the decoder's state are fixed-size, so a rollout of any
length should run in the memory its first blocks took. Memory is read every ``every`` blocks
(CPU: the process's resident set; CUDA: memory allocated on the device).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from worldsim.positions import largest_position
from worldsim.scenario import PromptState, load_scenario
from worldsim.session import NonFiniteError
from worldsim.world import World

P_CUT = 0.05  # chance of a cut before a block
P_PROMPT = 0.2  # chance of a prompt change before a block that does not cut
WARM_BLOCKS = 20  # memory is compared from the reading after this many blocks, once everything is allocated
GROWTH_LIMIT_MB = 16.0  # memory growth allowed after the warm-up (allocator noise), or 5 % if more


@dataclass
class SoakResult:
    """What a soak run saw."""

    model: str
    device: str
    blocks: int  # blocks generated
    prompt_changes: int
    cuts: int
    seconds: float
    failure: str = ""  # the error that stopped the run early, if any
    positions_out_of_window: list[int] = field(default_factory=list)  # blocks whose positions left the window
    memory_mb: list[tuple[int, float]] = field(default_factory=list)  # (blocks generated, MiB)
    cache_mb: float = 0.0

    @property
    def memory_growth_mb(self) -> float:
        """MiB gained from the first reading after the warm-up to the last."""
        steady = [mb for block, mb in self.memory_mb if block >= WARM_BLOCKS] or [
            mb for _, mb in self.memory_mb
        ]
        return steady[-1] - steady[0] if steady else 0.0

    @property
    def memory_flat(self) -> bool:
        """Memory grew by no more than GROWTH_LIMIT_MB (or 5 %) after the warm-up."""
        first = next((mb for block, mb in self.memory_mb if block >= WARM_BLOCKS), None)
        limit = max(GROWTH_LIMIT_MB, 0.05 * (first or 0.0))
        return self.memory_growth_mb <= limit

    @property
    def ok(self) -> bool:
        """No failure, every position in the window, memory flat."""
        return not self.failure and not self.positions_out_of_window and self.memory_flat

    def to_dict(self) -> dict[str, Any]:
        """Plain values for JSON."""
        flat = self.memory_flat
        return {**asdict(self), "memory_growth_mb": self.memory_growth_mb, "memory_flat": flat, "ok": self.ok}


def run_soak(world: World, blocks: int = 3500, seed: int = 0, every: int = 100) -> SoakResult:
    """Roll out `blocks` blocks, changing prompt or cutting at random (from the bundle's scenario if any)."""
    rng = np.random.default_rng(seed)
    state = PromptState(load_scenario(world.scenario)) if world.scenario else None
    prompts = [a for a in state.scenario.actions if a.kind == "prompt"] if state else []
    cuts = [a for a in state.scenario.actions if a.kind == "cut"] if state else []
    start = state.prompt if state else "a quiet street"
    session = world.session(start, seed=seed)
    config = session.config
    bound = largest_position(config)
    result = SoakResult(world.name, str(world.model.device), 0, 0, 0, 0.0)
    started = time.perf_counter()
    for index in tqdm(range(blocks), desc="soak", unit="block"):
        cut = rng.random() < P_CUT
        if cut:
            change = state.apply(cuts[rng.integers(len(cuts))]) if state and cuts else None
            session.cut(change.prompt if change else f"a place {rng.integers(1000)}")
        elif rng.random() < P_PROMPT:
            change = state.apply(prompts[rng.integers(len(prompts))]) if state and prompts else None
            session.set_prompt(change.prompt if change else f"a quiet street, hour {rng.integers(24)}")
        try:
            block = session.step()
        except NonFiniteError as err:
            result.failure = str(err)
            break
        result.blocks += 1
        result.cuts += block.cut
        result.prompt_changes += block.flushed and not block.cut
        limit = None if bound is None else bound + (config.cut_delta if block.cut else 0)
        if limit is not None and max(block.positions) > limit:
            result.positions_out_of_window.append(index)
        if index % every == 0 or index == blocks - 1:
            result.memory_mb.append((index + 1, memory_mb(world.model.device)))
    result.seconds = time.perf_counter() - started
    result.cache_mb = session.cache.nbytes / 2**20
    return result


def memory_mb(device: torch.device) -> float:
    """Memory in use now, MiB: on CUDA allocated on the device, else the process's resident set."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    statm = Path("/proc/self/statm")
    if statm.is_file():
        import resource

        return int(statm.read_text().split()[1]) * resource.getpagesize() / 2**20
    import resource  # not Linux: the peak is what can be read

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def format_soak(result: SoakResult) -> str:
    """A readable report: counts, checks, and memory over time."""
    lines = [
        f"model {result.model} on {result.device}: {result.blocks} blocks in {result.seconds:.0f} s, "
        f"{result.prompt_changes} prompt changes (KV Flush), {result.cuts} cuts (RoPE Cut)",
        f"non-finite latents: {result.failure or 'none'}",
        "positions outside the window: "
        + (", ".join(f"block {b}" for b in result.positions_out_of_window[:10]) or "none"),
        "memory (MiB) by blocks generated: "
        + ", ".join(f"{block}: {mb:.0f}" for block, mb in result.memory_mb),
        f"memory growth after {WARM_BLOCKS} blocks: {result.memory_growth_mb:+.1f} MiB "
        f"({'flat' if result.memory_flat else 'GROWING'}); KV cache {result.cache_mb:.1f} MiB",
        "verdict: " + ("ok" if result.ok else "FAILED"),
    ]
    return "\n".join(lines)
