"""Few-step flow-matching sampling of one block (Self-Forcing, arXiv 2506.08009).

The model predicts a flow v with x_t = (1 - sigma) x0 + sigma eps, so x0 = x_t - sigma v. A block
starts from noise; after each step but the last, x0 is re-noised to the next sigma. Timesteps are
Wan's: sigma grid linspace(1, 0, 1001)[:-1], warped by the shift, ``t = 1000 sigma``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

SigmaLike = TypeVar("SigmaLike", float, Tensor)


def shift_sigma(sigma: SigmaLike, shift: float) -> SigmaLike:
    """Wan's timestep shift of a noise level in [0, 1]: shift * s / (1 + (shift - 1) s)."""
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def shifted_sigma(timestep: int, shift: float, num_train_timesteps: int = 1000) -> float:
    """Warped sigma of a step-list timestep: sigma = s / T, then shifted (`shift_sigma`)."""
    return shift_sigma(1.0 - (num_train_timesteps - timestep) / num_train_timesteps, shift)


@dataclass(frozen=True)
class FlowMatchSchedule:
    """The sigmas a block is denoised through."""

    denoising_steps: tuple[int, ...] = (1000, 750, 500, 250)
    shift: float = 5.0
    warp: bool = True  # False: the steps are the timesteps themselves, sigma = t / 1000 (CausVid)

    @property
    def sigmas(self) -> tuple[float, ...]:
        """Sigma of each step, in step order: warped by the shift, or t / 1000 unwarped."""
        if not self.warp:
            return tuple(t / 1000.0 for t in self.denoising_steps)
        return tuple(shifted_sigma(t, self.shift) for t in self.denoising_steps)

    @property
    def timesteps(self) -> tuple[float, ...]:
        """Model timesteps (1000 sigma) of each step."""
        return tuple(1000.0 * s for s in self.sigmas)


FlowFn = Callable[[Tensor, float], Tensor]  # (x_t, timestep) -> predicted flow
# One generator for the whole batch, or one per rollout of the batch (each row drawn from its own).
Generators = torch.Generator | Sequence[torch.Generator]


def gaussian(shape: Sequence[int], generator: Generators | None) -> Tensor:
    """Standard normal float32 noise on the CPU, of `shape` (B, ...).

    With one generator per row, row b is what `generator[b]` alone draws for a batch of one, so a
    rollout draws the same numbers in a batch as on its own.
    """
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator, dtype=torch.float32)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
    row = (1, *shape[1:])
    return torch.cat([torch.randn(row, generator=g, dtype=torch.float32) for g in generator])


def sample_block(
    flow_fn: FlowFn, schedule: FlowMatchSchedule, noise: Tensor, generator: Generators
) -> Tensor:
    """Denoise `noise` (B, C, n, h, w) to a clean block x0; re-noising draws from `generator` (CPU)."""
    x = noise.float()
    steps = list(zip(schedule.sigmas, schedule.timesteps, strict=True))
    for i, (sigma, timestep) in enumerate(steps):
        x0 = x - sigma * flow_fn(x, timestep).float()
        if i == len(steps) - 1:
            return x0
        next_sigma = steps[i + 1][0]
        eps = gaussian(x0.shape, generator).to(x0.device)
        x = (1.0 - next_sigma) * x0 + next_sigma * eps
    raise ValueError("the schedule has no steps")


def renoise(x0: Tensor, timestep: int, generator: Generators | None) -> Tensor:
    """x0 noised to sigma = timestep / 1000, the level the model is told (0 returns x0 unchanged)."""
    if timestep == 0:
        return x0
    sigma = timestep / 1000.0
    eps = gaussian(x0.shape, generator).to(x0.device)
    return (1.0 - sigma) * x0 + sigma * eps
