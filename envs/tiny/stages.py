"""The one training loop every stage of the tiny world model runs through: ``train_component``.

A ``Stage`` names what one component learns: its parameters, its optimiser, its learning-rate
schedule and the loss of one step. ``train_component`` runs it from its last checkpoint to its last
step, checkpointing atomically every few steps and logging each checkpoint to the run's
``log.jsonl``. Every random draw of step ``s`` of stage ``k`` comes from generators seeded with
``(seed, k, s)``, so a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

StepLoss = Callable[[int, np.random.Generator, torch.Generator], tuple[Tensor, dict[str, float]]]


@dataclass
class Stage:
    """One component to train: what changes, how fast, and what one step minimises."""

    name: str  # checkpoint file (<name>.ckpt), progress bar and log name
    stream: int  # which random stream of the run seed its steps draw from (step_generators)
    model: nn.Module  # saved as the checkpoint's "model"
    parameters: list[nn.Parameter]  # what the optimiser changes
    optimizer: torch.optim.Optimizer
    steps: int
    peak_lr: float
    warmup_steps: int
    loss: StepLoss  # (step, numpy rng, torch generator) -> (loss, values to log)
    after_step: Callable[[int], None] | None = None  # e.g. the EMA update, after each optimiser step
    extra: dict[str, nn.Module] = field(default_factory=dict)  # more modules the checkpoint keeps (an EMA)
    prepare: Callable[[], None] | None = None  # work needed only if steps remain (data to load)


def train_component(stage: Stage, run: Path, seed: int, checkpoint_every: int) -> None:
    """Train `stage` from its checkpoint in `run` (if any) to its last step."""
    path = run / f"{stage.name}.ckpt"
    state = load_checkpoint(path)  # a finished stage skips the loop
    start, seconds = 0, 0.0
    if state is not None:
        stage.model.load_state_dict(state["model"])
        for key, module in stage.extra.items():
            module.load_state_dict(state[key])
        stage.optimizer.load_state_dict(state["optimizer"])
        start, seconds = state["step"], state.get("seconds", 0.0)
    if start < stage.steps and stage.prepare is not None:
        stage.prepare()
    clock = time.perf_counter()
    bar = tqdm(range(start, stage.steps), initial=start, total=stage.steps, desc=stage.name, unit="step")
    for step in bar:
        rng, noise = step_generators(seed, stage.stream, step)
        loss, logged = stage.loss(step, rng, noise)
        for group in stage.optimizer.param_groups:
            group["lr"] = learning_rate(step, stage.steps, stage.peak_lr, stage.warmup_steps)
        stage.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(stage.parameters, 1.0)
        stage.optimizer.step()
        if stage.after_step is not None:
            stage.after_step(step)
        bar.set_postfix({name: f"{value:.4f}" for name, value in logged.items()})
        if (step + 1) % checkpoint_every == 0 or step + 1 == stage.steps:
            seconds, clock = seconds + time.perf_counter() - clock, time.perf_counter()
            extra = {key: module.state_dict() for key, module in stage.extra.items()}
            save_checkpoint(
                path,
                {
                    "step": step + 1,
                    "model": stage.model.state_dict(),
                    **extra,
                    "optimizer": stage.optimizer.state_dict(),
                    "seconds": seconds,
                },
            )
            log(run, {"stage": stage.name, "step": step + 1, **logged, "seconds": seconds})


def trainable(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    """Every parameter of the modules, set to require gradients."""
    parameters = [p for module in modules for p in module.parameters()]
    for parameter in parameters:
        parameter.requires_grad_(True)
    return parameters


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically, so an interrupted save never leaves a broken checkpoint."""
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    partial.replace(path)


def load_checkpoint(path: Path) -> dict[str, Any] | None:
    """A stage's checkpoint, or None when the stage has not started."""
    if not path.is_file():
        return None
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    return state


def step_generators(seed: int, stream: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """The random sources of one training step, derived from the run seed (resumable exactly)."""
    numpy_rng = np.random.default_rng([seed, stream, step])
    torch_rng = torch.Generator().manual_seed(int(numpy_rng.integers(2**62)))
    return numpy_rng, torch_rng


def learning_rate(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to a tenth of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def log(run: Path, record: dict[str, Any]) -> None:
    """Append a record to the run's log.jsonl."""
    record = {"time": time.time(), **record}
    with (run / "log.jsonl").open("a") as file:
        file.write(json.dumps(record) + "\n")


def last_records(run: Path) -> dict[str, dict[str, Any]]:
    """The last log record of each stage."""
    last: dict[str, dict[str, Any]] = {}
    if (run / "log.jsonl").is_file():
        for line in (run / "log.jsonl").read_text().splitlines():
            record = json.loads(line)
            last[record["stage"]] = record
    return last
