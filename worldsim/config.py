"""Engine settings and named architecture presets.

``EngineConfig`` holds every knob of the infinity-RoPE rollout (arXiv 2511.20649): block size,
cache window, sink, KV Flush, RoPE Cut and the sampling schedule. Its defaults are the released
reference code's Wan settings. ``PRESETS`` names whole architectures (transformer, VAE, text
width, video size) so that a model with random weights can be built for tests and benchmarks.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the sampler needs torch; the settings do not
    from worldsim.sampler import FlowMatchSchedule

POSITION_SCHEMES = ("relative", "onset", "absolute")


@dataclass(frozen=True)
class EngineConfig:
    """How a rollout is generated; the defaults are the reference Wan settings."""

    block_frames: int = 3  # latent frames generated together
    window_frames: int = 6  # frames self-attention sees: kept frames + the block being generated
    sink_frames: int = 1  # first frames of the rollout that are never evicted (the global sink)
    flush_keep_frames: int = 2  # recent frames a KV Flush keeps besides the sink
    flush_on_prompt_change: bool = True  # False: a new prompt renews only the text keys/values
    # True: a new prompt re-encodes every cached frame under it (LongLive's recache), no flush
    recache_on_prompt_change: bool = False
    cut_delta: int = 42  # a RoPE Cut shifts the next block's temporal positions by this much
    cut_keeps_sink: bool = True  # False: a cut starts a fresh window whose first frame is the new sink
    denoising_steps: tuple[int, ...] = (1000, 750, 500, 250)  # timesteps before the shift warp
    shift: float = 5.0  # flow-matching timestep shift
    warp_denoising_steps: bool = True  # False: the steps are the timesteps themselves (CausVid)
    guidance_scale: float = 1.0  # classifier-free guidance against the empty prompt; 1 = off
    context_noise: int = 0  # timestep of the pass that writes a finished block into the cache
    positions: str = "relative"  # relative (Block-Relativistic) | onset | absolute
    onset_frame: int = 21  # the "onset" scheme anchors the block here, earlier frames before it
    fps: float = 16.0  # video frames per second
    training_horizon_frames: int = 21  # most latent frames the model saw together in training
    lead_in_blocks: int = 0  # blocks generated and kept as context before the first one shown
    image_still_latents: int = 1  # a start picture is encoded as a still clip of this many latent frames
    kept_frames: int = field(init=False)  # frames the cache holds between blocks

    def __post_init__(self) -> None:
        problems = []
        if self.block_frames < 1:
            problems.append("block_frames must be at least 1")
        if self.sink_frames < 0:
            problems.append("sink_frames must be 0 or more")
        if self.window_frames < self.block_frames + self.sink_frames:
            problems.append(
                f"window_frames ({self.window_frames}) must hold the sink ({self.sink_frames}) "
                f"and a block ({self.block_frames})"
            )
        if self.flush_keep_frames < 0 or self.sink_frames + self.flush_keep_frames > max(
            self.window_frames - self.block_frames, 0
        ):
            problems.append(
                f"flush_keep_frames ({self.flush_keep_frames}) plus the sink must fit in the "
                f"{self.window_frames - self.block_frames} frames kept between blocks"
            )
        if self.recache_on_prompt_change and self.flush_on_prompt_change:
            problems.append("a prompt change either flushes or recaches: set flush_on_prompt_change to false")
        if not self.denoising_steps or any(int(t) != t or not 0 < t <= 1000 for t in self.denoising_steps):
            problems.append("denoising_steps must be a non-empty list of whole timesteps in (0, 1000]")
        if list(self.denoising_steps) != sorted(self.denoising_steps, reverse=True):
            problems.append("denoising_steps must decrease")
        if not 0 <= self.context_noise < 1000:
            problems.append("context_noise must be in [0, 1000)")
        if self.positions not in POSITION_SCHEMES:
            problems.append(f"positions must be one of {POSITION_SCHEMES}, not {self.positions!r}")
        if self.shift <= 0 or self.fps <= 0:
            problems.append("shift and fps must be positive")
        if self.lead_in_blocks < 0:
            problems.append("lead_in_blocks must be 0 or more")
        if self.image_still_latents < 1:
            problems.append("image_still_latents must be at least 1")
        if self.guidance_scale < 1:
            problems.append(f"guidance_scale must be 1 (off) or more, not {self.guidance_scale}")
        if problems:
            raise ValueError("invalid engine settings: " + "; ".join(problems))
        object.__setattr__(self, "denoising_steps", tuple(int(t) for t in self.denoising_steps))
        object.__setattr__(self, "kept_frames", self.window_frames - self.block_frames)

    @property
    def schedule(self) -> FlowMatchSchedule:
        """The sigmas a block is denoised through."""
        from worldsim.sampler import FlowMatchSchedule

        return FlowMatchSchedule(self.denoising_steps, self.shift, self.warp_denoising_steps)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain JSON-able values."""
        values = dataclasses.asdict(self)
        values.pop("kept_frames")
        values["denoising_steps"] = list(self.denoising_steps)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EngineConfig:
        """Settings from a dict; unknown keys are an error."""
        known = {f.name for f in dataclasses.fields(cls) if f.init}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown engine settings: {', '.join(unknown)} (known: {', '.join(sorted(known))})"
            )
        for name, value in values.items():
            _check_type(name, value, _FIELD_KINDS[name])
        values = dict(values)
        if "denoising_steps" in values:
            values["denoising_steps"] = tuple(values["denoising_steps"])
        return cls(**values)

    def replace(self, **changes: Any) -> EngineConfig:
        """A copy with some settings changed (and validated)."""
        return EngineConfig.from_dict({**self.to_dict(), **changes})


# How a rollout answers a prompt change (``--on-prompt-change``): the engine settings of each answer.
PROMPT_CHANGES: dict[str, dict[str, bool]] = {
    "flush": {"flush_on_prompt_change": True, "recache_on_prompt_change": False},  # KV Flush
    "keep": {"flush_on_prompt_change": False, "recache_on_prompt_change": False},  # only the text renewed
    "recache": {"flush_on_prompt_change": False, "recache_on_prompt_change": True},  # LongLive's recache
}


# What each engine setting holds, as JSON gives it.
_FIELD_KINDS: dict[str, str] = {
    f.name: {"int": "a whole number", "float": "a number", "bool": "true or false", "str": "a string"}.get(
        str(f.type), "a list of whole numbers"
    )
    for f in dataclasses.fields(EngineConfig)
}


def _check_type(name: str, value: Any, kind: str) -> None:
    """Refuse a setting of the wrong JSON type, naming the setting (a string where a number goes, ...)."""
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
    number = lambda v: (whole(v) or isinstance(v, float)) and math.isfinite(v)  # noqa: E731
    fits = {
        "a whole number": whole,
        "a number": number,
        "true or false": lambda v: isinstance(v, bool),
        "a string": lambda v: isinstance(v, str),
        "a list of whole numbers": lambda v: isinstance(v, (list, tuple)) and all(whole(t) for t in v),
    }[kind]
    if not fits(value):
        raise ValueError(f"engine setting {name!r} must be {kind}, not {value!r}")


# Wan2.1 VAE latent statistics (per channel), used to normalise latents for the transformer.
WAN_LATENTS_MEAN = (
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
)  # fmt: skip
WAN_LATENTS_STD = (
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
)  # fmt: skip


@dataclass(frozen=True)
class ArchitecturePreset:
    """A whole model architecture: enough to build it with random weights."""

    transformer: dict[str, Any]  # WanTransformer3DModel keyword arguments
    vae: dict[str, Any]  # AutoencoderKLWan keyword arguments
    height: int  # video pixels
    width: int
    text_length: int  # tokens the text encoder produces (padded)
    engine: EngineConfig
    latents_mean: tuple[float, ...]
    latents_std: tuple[float, ...]


PRESETS: dict[str, ArchitecturePreset] = {
    "tiny": ArchitecturePreset(
        transformer=dict(
            patch_size=(1, 2, 2),
            num_attention_heads=2,
            attention_head_dim=64,
            in_channels=16,
            out_channels=16,
            text_dim=384,
            freq_dim=64,
            ffn_dim=512,
            num_layers=4,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
        ),
        vae=dict(
            base_dim=16,
            z_dim=16,
            dim_mult=[1, 2, 4],
            num_res_blocks=1,
            attn_scales=[],
            temperal_downsample=[True, True],
            latents_mean=[0.0] * 16,
            latents_std=[1.0] * 16,
        ),
        height=64,
        width=64,
        text_length=16,
        engine=EngineConfig(),
        latents_mean=(0.0,) * 16,
        latents_std=(1.0,) * 16,
    ),
    "wan-1.3b": ArchitecturePreset(
        transformer=dict(
            patch_size=(1, 2, 2),
            num_attention_heads=12,
            attention_head_dim=128,
            in_channels=16,
            out_channels=16,
            text_dim=4096,
            freq_dim=256,
            ffn_dim=8960,
            num_layers=30,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            eps=1e-6,
        ),
        vae=dict(
            base_dim=96,
            z_dim=16,
            dim_mult=[1, 2, 4, 4],
            num_res_blocks=2,
            attn_scales=[],
            temperal_downsample=[False, True, True],
        ),
        height=480,
        width=832,
        text_length=512,
        engine=EngineConfig(),
        latents_mean=WAN_LATENTS_MEAN,
        latents_std=WAN_LATENTS_STD,
    ),
}
