"""The Self-Forcing family of Wan2.1-T2V-1.3B generators: each project's inference settings, as presets.

Each preset sets what the project's own inference uses (block size, denoising steps, shift, warp)
and the infinity-RoPE window: the window and sink the released infinity-RoPE code runs the model
with where it runs it (6 frames, sink 1), else the project's own attention window and sink. Every
other setting is worldsim's Wan default (KV Flush keeps 2 frames, a RoPE Cut moves 42 positions).
``entry`` is the checkpoint entry the project's own inference loads (``--use_ema`` or not).

A checkpoint's family is detected from its file name (and folder) where that is unambiguous: the
weights themselves are the same architecture in every family.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from worldsim.config import EngineConfig

ENTRIES = ("generator", "generator_ema")


@dataclass(frozen=True)
class Family:
    """One project's inference settings."""

    name: str
    engine: dict[str, Any]  # EngineConfig settings over worldsim's Wan defaults
    entry: str  # the checkpoint entry its inference loads
    source: str  # where the settings come from
    files: tuple[str, ...] = ()  # file names, with their folder where the name alone is ambiguous
    notes: tuple[str, ...] = field(default_factory=tuple)

    def config(self, base: EngineConfig | None = None) -> EngineConfig:
        """The engine settings of this family."""
        return (base or EngineConfig()).replace(**self.engine)


FOUR_STEPS = [1000, 750, 500, 250]

FAMILIES: dict[str, Family] = {
    family.name: family
    for family in (
        Family(
            "self-forcing",
            {
                "block_frames": 3,
                "denoising_steps": FOUR_STEPS,
                "shift": 5.0,
                "window_frames": 6,
                "sink_frames": 1,
            },
            "generator_ema",
            "guandeh17/Self-Forcing configs/self_forcing_dmd.yaml (3-frame blocks, 4 warped steps, shift 5; "
            "its README runs --use_ema); window 6 and sink 1: yesiltepe-hidir/infinity-rope "
            "configs/self_forcing_dmd.yaml",
            ("self_forcing_dmd.pt",),
        ),
        Family(
            "causal-forcing",
            {
                "block_frames": 3,
                "denoising_steps": FOUR_STEPS,
                "shift": 5.0,
                "window_frames": 6,
                "sink_frames": 1,
            },
            "generator",
            "Causal-Forcing configs/causal_forcing_dmd_chunkwise.yaml (3-frame blocks, 4 warped steps, "
            "shift 5; its README loads chunkwise/causal_forcing.pt without --use_ema); window 6 and sink 1: "
            "infinity-rope inference_causal_forcing.sh",
            ("chunkwise/causal_forcing.pt",),
        ),
        Family(
            "causal-forcing-framewise",
            {
                "block_frames": 1,
                "denoising_steps": FOUR_STEPS,
                "shift": 5.0,
                "window_frames": 6,
                "sink_frames": 1,
            },
            "generator_ema",
            "Causal-Forcing configs/causal_forcing_dmd_framewise.yaml (1-frame blocks, 4 warped steps, "
            "shift 5; framewise/causal_forcing.pt with --use_ema); the infinity-RoPE window of 6 with sink 1",
            ("framewise/causal_forcing.pt",),
        ),
        Family(
            "rolling-forcing",
            {
                "block_frames": 3,
                "denoising_steps": [1000, 800, 600, 400, 200],
                "shift": 5.0,
                "window_frames": 21,
                "sink_frames": 3,
            },
            "generator_ema",
            "TencentARC/RollingForcing configs/rolling_forcing_dmd.yaml (3-frame blocks, 5 warped steps, "
            "shift 5; README: --use_ema); its attention window of 21 frames with the first block (3 frames) "
            "as sink",
            ("rolling_forcing_dmd.pt",),
            (
                "Rolling Forcing denoises 5 blocks at staggered noise levels at once; here its weights run "
                "block by block",
            ),
        ),
        Family(
            "causvid",
            {
                "block_frames": 3,
                "denoising_steps": [1000, 757, 522],
                "warp_denoising_steps": False,
                "shift": 8.0,
                "window_frames": 21,
                "sink_frames": 0,
            },
            "generator",
            "tianweiy/CausVid configs/wan_causal_dmd.yaml (3-frame blocks, steps 1000, 757, 522 unwarped, "
            "shift 8; loads ['generator']); its 21-frame cache, no sink",
            ("autoregressive_checkpoint/model.pt",),
        ),
        Family(
            "longlive",
            {
                "block_frames": 3,
                "denoising_steps": FOUR_STEPS,
                "shift": 5.0,
                "window_frames": 12,
                "sink_frames": 3,
            },
            "generator",
            "NVlabs/LongLive (1.3B, commit 2462895) configs/longlive_inference.yaml (3-frame blocks, 4 "
            "warped steps, shift 5, local attention 12 frames, sink 3, use_ema false; LoRA rank 256, alpha "
            "256)",
            ("longlive_base.pt",),
        ),
        Family(
            "infinite-forcing",
            {
                "block_frames": 3,
                "denoising_steps": FOUR_STEPS,
                "shift": 5.0,
                "window_frames": 6,
                "sink_frames": 1,
            },
            "generator_ema",
            "SOTAMak1r/Infinite-Forcing configs/self_forcing_dmd_vsink1.yaml (3-frame blocks, 4 warped "
            "steps, shift 5, window 6, sink 1; --use_ema); the checkpoint the infinity-RoPE code downloads",
            ("ema_model.pt",),
        ),
    )
}


def detect_family(path: str | Path) -> Family | None:
    """The family a checkpoint file belongs to, from its name (and folder); None when that is ambiguous."""
    path = Path(path)
    named = f"{path.parent.name}/{path.name}"
    matches = [f for f in FAMILIES.values() if any(named.endswith(pattern) for pattern in f.files)]
    if len({f.name for f in matches}) == 1:
        return matches[0]
    return None


def family_of(name: str) -> Family:
    """The family of a preset name; ValueError listing the known ones."""
    if name not in FAMILIES:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]
