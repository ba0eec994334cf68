"""A loaded world model: transformer, streaming decoder, text encoder and engine settings.

``load(name_or_path)`` opens a bundle (a local folder with ``worldsim.json``, DESIGN section 6),
or a diffusers-format Wan2.1-T2V pipeline folder with an optional Self-Forcing-family generator
checkpoint. ``random_world(preset)`` builds a named architecture with random weights, for tests and
benchmarks. Nothing is ever downloaded.

worldsim.json::

    {
      "format": "worldsim-bundle", "version": 1, "name": "...",
      "height": 480, "width": 832,
      "transformer": "transformer",            # diffusers folder, relative to the bundle
      "generator_checkpoint": null,            # optional original-format weights to load over it
      "vae": "vae",                            # diffusers AutoencoderKLWan folder
      "text_encoder": {"kind": "umt5", "path": "text_encoder", "tokenizer": "tokenizer", "max_length": 512},
      "latents_mean": [...], "latents_std": [...],   # optional: default to the VAE config's
      "engine": {...}                          # EngineConfig fields; missing ones take the defaults
    }
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel
from safetensors import SafetensorError

from models.causal_wan import FP32_MODULES, CausalWanTransformer, TextContext
from models.checkpoint import load_diffusers_transformer, load_generator_checkpoint
from models.streaming_vae import StreamingDecoder
from models.text import (
    CachedTextEncoder,
    HashTextEncoder,
    MiniLMTextEncoder,
    TextEncoder,
    UMT5TextEncoder,
    WhitenedTextEncoder,
    Whitening,
)
from worldsim.config import PRESETS, EngineConfig
from worldsim.session import Session

BUNDLE_FILE = "worldsim.json"
# Prompts whose cross-attention keys/values stay on the device (Wan: ~94 MB each in bf16).
TEXT_CONTEXTS_KEPT = 8
BUILTIN_BUNDLES = Path(__file__).resolve().parent.parent / "models" / "bundles"


class BundleError(ValueError):
    """A bundle folder that cannot be opened; the message says why."""


@dataclass
class World:
    """Everything a session needs, loaded once and shared by all sessions."""

    name: str
    model: CausalWanTransformer
    decoder: StreamingDecoder
    text_encoder: CachedTextEncoder
    config: EngineConfig
    height: int
    width: int
    source: str = ""
    scenario: str | None = None  # path of the scenario file the bundle ships, if any

    def __post_init__(self) -> None:
        self._contexts: OrderedDict[str, TextContext] = OrderedDict()
        stride = self.decoder.spatial_stride
        if self.height % (stride * 2) or self.width % (stride * 2):
            raise BundleError(f"video size {self.height}x{self.width} is not a multiple of {stride * 2}")

    @property
    def latent_channels(self) -> int:
        """Channels of a latent frame."""
        return self.model.transformer.config.in_channels

    def latent_shape(self, frames: int) -> tuple[int, int, int, int, int]:
        """Shape (1, C, frames, h, w) of a latent block."""
        stride = self.decoder.spatial_stride
        return (1, self.latent_channels, frames, self.height // stride, self.width // stride)

    def text_context(self, prompt: str) -> TextContext:
        """Cross-attention keys/values of `prompt`, computed once per prompt."""
        context = self._contexts.get(prompt)
        if context is None:
            states = self.text_encoder.encode(prompt).to(self.model.device)
            context = self.model.encode_text(states)
            self._contexts[prompt] = context
            if len(self._contexts) > TEXT_CONTEXTS_KEPT:
                self._contexts.popitem(last=False)
        else:
            self._contexts.move_to_end(prompt)
        return context

    def weights_hash(self) -> str:
        """SHA-256 of every transformer and VAE weight (computed once), identifying a model exactly."""
        if getattr(self, "_weights_hash", None) is None:
            digest = hashlib.sha256()
            for prefix, module in (("transformer.", self.model.transformer), ("vae.", self.decoder.vae)):
                for name, tensor in sorted(module.state_dict().items()):
                    digest.update((prefix + name + str(tuple(tensor.shape)) + str(tensor.dtype)).encode())
                    digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
            self._weights_hash = digest.hexdigest()
        return self._weights_hash

    def session(
        self, prompt: str, seed: int = 0, config: EngineConfig | None = None, **settings: Any
    ) -> Session:
        """Start a rollout from `prompt` with the world's settings, or `config`, changed by `settings`."""
        config = config or self.config
        return Session(self, prompt, seed=seed, config=config.replace(**settings) if settings else config)


def random_world(
    preset: str = "tiny",
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
    attention: str = "sdpa",
) -> World:
    """A world of a named architecture with random weights (for benchmarks and tests)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    spec = PRESETS[preset]
    torch.manual_seed(seed)
    with torch.device(device):
        transformer = WanTransformer3DModel(**spec.transformer)
        vae = AutoencoderKLWan(**spec.vae)
    text = HashTextEncoder(spec.transformer["text_dim"], spec.text_length, device=device)
    return assemble_world(
        f"random-{preset}", transformer, vae, text, spec.engine, spec.height, spec.width,
        spec.latents_mean, spec.latents_std, device, dtype, attention,
    )  # fmt: skip


def load(
    name_or_path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    checkpoint: str | Path | None = None,
    attention: str = "sdpa",
) -> World:
    """Open a bundle by built-in name or folder path, or a diffusers Wan2.1 pipeline folder."""
    path = _resolve(name_or_path)
    if (path / BUNDLE_FILE).is_file():
        return _load_bundle(path, device, dtype, checkpoint, attention)
    if (path / "model_index.json").is_file():
        return _load_wan_pipeline(path, device, dtype, checkpoint, attention)
    raise BundleError(
        f"{path} is neither a worldsim bundle (no {BUNDLE_FILE}) "
        "nor a diffusers pipeline folder (no model_index.json)"
    )


def _resolve(name_or_path: str | Path) -> Path:
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    builtin = BUILTIN_BUNDLES / str(name_or_path)
    if builtin.is_dir():
        return builtin
    known = (
        sorted(p.name for p in BUILTIN_BUNDLES.iterdir() if p.is_dir()) if BUILTIN_BUNDLES.is_dir() else []
    )
    raise BundleError(
        f"no bundle named {str(name_or_path)!r}: not a folder, and not a built-in bundle "
        f"(built-in: {', '.join(known) or 'none installed'})"
    )


def _load_bundle(
    folder: Path,
    device: str | torch.device,
    dtype: torch.dtype,
    checkpoint: str | Path | None,
    attention: str,
) -> World:
    try:
        spec = json.loads((folder / BUNDLE_FILE).read_text())
    except json.JSONDecodeError as err:
        raise BundleError(f"{folder / BUNDLE_FILE} is not valid JSON: {err}") from err
    if not isinstance(spec, dict) or spec.get("format") != "worldsim-bundle":
        raise BundleError(
            f"{folder / BUNDLE_FILE} is not a worldsim bundle file (format must be 'worldsim-bundle')"
        )
    if spec.get("version") != 1:
        raise BundleError(f"{folder / BUNDLE_FILE}: unsupported bundle version {spec.get('version')!r}")
    missing = [key for key in ("transformer", "vae", "text_encoder", "height", "width") if key not in spec]
    if missing:
        raise BundleError(f"{folder / BUNDLE_FILE} lacks {', '.join(missing)}")
    if not isinstance(spec.get("engine", {}), dict):
        raise BundleError(f"{folder / BUNDLE_FILE}: 'engine' must be an object of engine settings")
    if not isinstance(spec["text_encoder"], dict):
        raise BundleError(
            f"{folder / BUNDLE_FILE}: 'text_encoder' must be an object with a 'kind' (umt5 or hash)"
        )
    try:
        engine = EngineConfig.from_dict(spec.get("engine", {}))
    except (TypeError, ValueError) as err:
        raise BundleError(f"{folder / BUNDLE_FILE}: {err}") from err

    transformer = load_diffusers_transformer(folder / spec["transformer"], torch_dtype=torch.float32)
    checkpoint = checkpoint or (
        folder / spec["generator_checkpoint"] if spec.get("generator_checkpoint") else None
    )
    if checkpoint is not None:
        load_generator_checkpoint(transformer, checkpoint)
    vae = load_vae_folder(folder / spec["vae"])
    text = _text_encoder(spec["text_encoder"], folder, device)
    mean = spec.get("latents_mean", vae.config.latents_mean)
    std = spec.get("latents_std", vae.config.latents_std)
    return assemble_world(
        spec.get("name", folder.name), transformer, vae, text, engine,
        int(spec["height"]), int(spec["width"]), mean, std, device, dtype, attention, source=str(folder),
        scenario=_bundle_scenario(folder, spec),
    )  # fmt: skip


def _bundle_scenario(folder: Path, spec: dict[str, Any]) -> str | None:
    if not spec.get("scenario"):
        return None
    path = folder / spec["scenario"]
    if not path.is_file():
        raise BundleError(
            f"{folder / BUNDLE_FILE} names scenario {spec['scenario']!r}, which is not in the bundle"
        )
    return str(path)


def _load_wan_pipeline(
    folder: Path,
    device: str | torch.device,
    dtype: torch.dtype,
    checkpoint: str | Path | None,
    attention: str,
) -> World:
    transformer = load_diffusers_transformer(folder / "transformer", torch_dtype=torch.float32)
    if checkpoint is not None:
        load_generator_checkpoint(transformer, checkpoint)
    vae = load_vae_folder(folder / "vae")
    text = _umt5(folder / "text_encoder", folder / "tokenizer", device=device, dtype=dtype)
    spec = PRESETS["wan-1.3b"]
    return assemble_world(
        folder.name, transformer, vae, text, spec.engine, spec.height, spec.width,
        vae.config.latents_mean, vae.config.latents_std, device, dtype, attention, source=str(folder),
    )  # fmt: skip


def load_vae_folder(folder: Path) -> AutoencoderKLWan:
    """An ``AutoencoderKLWan`` from a diffusers folder, in float32; BundleError if it is missing or broken."""
    if not (folder / "config.json").is_file():
        raise BundleError(
            f"no VAE at {folder} (expected a diffusers AutoencoderKLWan folder with config.json)"
        )
    try:
        return AutoencoderKLWan.from_pretrained(
            folder, local_files_only=True, torch_dtype=torch.float32, low_cpu_mem_usage=False
        )
    except (OSError, ValueError, RuntimeError) as err:
        raise BundleError(f"cannot load the VAE from {folder}: {err}") from err


def _umt5(folder: Path, tokenizer: Path, **options: Any) -> UMT5TextEncoder:
    try:
        return UMT5TextEncoder(folder, tokenizer, **options)
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        raise BundleError(
            f"cannot load the UMT5 text encoder from {folder} (tokenizer {tokenizer}): {err}"
        ) from err


def _text_encoder(spec: dict[str, Any], folder: Path, device: str | torch.device) -> TextEncoder:
    kind = spec.get("kind")
    if kind == "umt5":
        path = folder / spec.get("path", "text_encoder")
        tokenizer = folder / spec.get("tokenizer", spec.get("path", "tokenizer"))
        return _umt5(path, tokenizer, max_length=int(spec.get("max_length", 512)), device=device)
    if kind == "hash":
        if "dim" not in spec:
            raise BundleError("the hash text encoder needs 'dim' (the transformer's text_dim)")
        return HashTextEncoder(int(spec["dim"]), int(spec.get("length", 16)), device=device)
    if kind == "minilm":
        path = spec.get("path")
        try:
            encoder: TextEncoder = MiniLMTextEncoder(
                folder / path if path else None, max_length=int(spec.get("max_length", 16)), device=device
            )
        except (OSError, ValueError) as err:
            raise BundleError(f"cannot load the MiniLM text encoder: {err}") from err
        if spec.get("whitening"):
            whitening_path = folder / spec["whitening"]
            if not whitening_path.is_file():
                raise BundleError(f"the text whitening file {whitening_path} is missing")
            try:
                encoder = WhitenedTextEncoder(encoder, Whitening.load(whitening_path))
            except ValueError as err:
                raise BundleError(f"cannot use the text whitening: {err}") from err
        return encoder
    raise BundleError(f"unknown text encoder kind {kind!r} (known: umt5, minilm, hash)")


def assemble_world(
    name: str,
    transformer: WanTransformer3DModel,
    vae: AutoencoderKLWan,
    text: TextEncoder,
    engine: EngineConfig,
    height: int,
    width: int,
    latents_mean: Any,
    latents_std: Any,
    device: str | torch.device,
    dtype: torch.dtype,
    attention: str,
    source: str = "",
    scenario: str | None = None,
) -> World:
    """Put loaded components together on a device and dtype, checking that they fit each other."""
    transformer = _cast(transformer, device, dtype, keep_fp32=FP32_MODULES).eval().requires_grad_(False)
    vae = _cast(vae, device, dtype).eval().requires_grad_(False)
    text_dim = transformer.config.text_dim
    if text.dim != text_dim:
        raise BundleError(
            f"the text encoder gives {text.dim}-wide states but the transformer expects {text_dim}"
        )
    if vae.config.z_dim != transformer.config.in_channels:
        raise BundleError(
            f"the VAE has {vae.config.z_dim} latent channels "
            f"but the transformer takes {transformer.config.in_channels}"
        )
    return World(
        name=name,
        model=CausalWanTransformer(transformer, attention=attention),
        decoder=StreamingDecoder(vae, list(latents_mean), list(latents_std)),
        text_encoder=CachedTextEncoder(text),
        config=engine,
        height=height,
        width=width,
        source=source,
        scenario=scenario,
    )


def _cast(
    module: torch.nn.Module, device: str | torch.device, dtype: torch.dtype, keep_fp32: tuple = ()
) -> Any:
    """Move a model to `device` and `dtype`, leaving the weights of `keep_fp32` modules in float32."""
    module.to(device)
    for name, param in module.named_parameters():
        keep = any(part in keep_fp32 for part in name.split("."))
        param.data = param.data.to(torch.float32 if keep else dtype)
    return module


def save_bundle(
    folder: str | Path,
    transformer: WanTransformer3DModel,
    vae: AutoencoderKLWan,
    text_encoder: dict[str, Any],
    engine: EngineConfig,
    height: int,
    width: int,
    name: str,
    latents_mean: Any = None,
    latents_std: Any = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a bundle folder (safetensors weights and worldsim.json) that `load` opens."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    transformer.save_pretrained(folder / "transformer", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    spec: dict[str, Any] = {
        "format": "worldsim-bundle",
        "version": 1,
        "name": name,
        "height": height,
        "width": width,
        "transformer": "transformer",
        "vae": "vae",
        "text_encoder": text_encoder,
        "engine": engine.to_dict(),
        **(extra or {}),
    }
    if latents_mean is not None:
        spec["latents_mean"] = [float(v) for v in latents_mean]
        spec["latents_std"] = [float(v) for v in latents_std]
    (folder / BUNDLE_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    return folder
