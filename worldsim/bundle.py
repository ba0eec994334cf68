"""Opening world models from files (and making them from random weights): the one place weights load.

``load(name_or_path)`` opens a bundle (a local folder with ``worldsim.json``),
or a diffusers-format Wan2.1-T2V pipeline folder with an optional Self-Forcing-family generator
checkpoint. ``random_world(preset)`` builds a named architecture with random weights, for tests and
benchmarks. Both end in ``assemble_world``, which checks that the parts fit and puts them on a
device. Nothing is ever downloaded.

worldsim.json::

    {
      "format": "worldsim-bundle", "version": 1, "name": "...",
      "height": 480, "width": 832,
      "transformer": "transformer",            # diffusers folder, relative to the bundle
      "generator_checkpoint": null,            # optional original-format weights to load over it
      "vae": "vae",                            # diffusers AutoencoderKLWan folder
      "text_encoder": {"kind": "umt5", "path": "text_encoder", "tokenizer": "tokenizer", "max_length": 512},
      "latents_mean": [...], "latents_std": [...],   # optional: default to the VAE config's
      "scenario": "scenario.toml",             # optional: the actions the bundle is played with
      "engine": {...}                          # EngineConfig fields; missing ones take the defaults
    }
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKLWan, WanTransformer3DModel

from models import original_wan
from models.causal_wan import CausalWanTransformer
from models.checkpoint import (
    CheckpointError,
    load_diffusers_transformer,
    load_generator_checkpoint,
    require_finite,
)
from models.lora import merge_lora, read_lora
from models.precision import FP32_MODULES, cast_module
from models.streaming_vae import StreamingDecoder
from models.taehv import StreamingTAEHV, load_taehv
from models.text import (
    TEXT_OFFLOAD,
    CachedTextEncoder,
    HashTextEncoder,
    TextEncoder,
    TextEncoderError,
    UMT5TextEncoder,
    load_tokenizer,
    text_encoder_from_spec,
)
from worldsim.config import PRESETS, EngineConfig
from worldsim.families import Family, detect_family, family_of
from worldsim.world import World

BUNDLE_FILE = "worldsim.json"
BUNDLE_FORMAT = "worldsim-bundle"
BUILTIN_BUNDLES = Path(__file__).resolve().parent.parent / "models" / "bundles"


class BundleError(ValueError):
    """A bundle folder that cannot be opened; the message says why."""


# ---------------------------------------------------------------------------------------------
# worldsim.json
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BundleSpec:
    """The contents of a bundle's worldsim.json, each field checked."""

    name: str
    height: int
    width: int
    transformer: str  # paths relative to the bundle folder
    vae: str
    text_encoder: dict[str, Any]
    engine: EngineConfig
    generator_checkpoint: str | None = None
    latents_mean: tuple[float, ...] | None = None  # None: the VAE config's
    latents_std: tuple[float, ...] | None = None
    scenario: str | None = None

    @staticmethod
    def read(folder: Path) -> BundleSpec:
        """Parse and check `folder`/worldsim.json; a problem is a BundleError naming the file and field."""
        path = folder / BUNDLE_FILE
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BundleError(f"{path} is not valid JSON: {err}") from err
        except OSError as err:
            raise BundleError(f"cannot read {path}: {err}") from err
        if not isinstance(data, dict) or data.get("format") != BUNDLE_FORMAT:
            raise BundleError(f"{path} is not a worldsim bundle file (format must be '{BUNDLE_FORMAT}')")
        if data.get("version") != 1:
            raise BundleError(f"{path}: unsupported bundle version {data.get('version')!r}")
        missing = [
            key for key in ("transformer", "vae", "text_encoder", "height", "width") if key not in data
        ]
        if missing:
            raise BundleError(f"{path} lacks {', '.join(missing)}")

        def field(key: str, check: Callable[[Any], bool], what: str) -> Any:
            value = data.get(key)
            if not check(value):
                raise BundleError(f"{path}: '{key}' must be {what}, not {value!r}")
            return value

        field("engine", _optional(_is_object), "an object of engine settings")
        field("text_encoder", _is_object, "an object with a 'kind' (umt5, minilm or hash)")
        for key in ("latents_mean", "latents_std"):
            field(key, _optional(_is_numbers), "a list of numbers")
        try:
            engine = EngineConfig.from_dict(data.get("engine") or {})
        except ValueError as err:
            raise BundleError(f"{path}: {err}") from err
        mean, std = data.get("latents_mean"), data.get("latents_std")
        return BundleSpec(
            name=field("name", _optional(_is_text), "a non-empty string") or folder.name,
            height=field("height", _is_size, "a positive whole number of pixels"),
            width=field("width", _is_size, "a positive whole number of pixels"),
            transformer=field("transformer", _is_text, "a folder name (a string)"),
            vae=field("vae", _is_text, "a folder name (a string)"),
            text_encoder=data["text_encoder"],
            engine=engine,
            generator_checkpoint=field("generator_checkpoint", _optional(_is_text), "a file name or null"),
            latents_mean=None if mean is None else tuple(float(v) for v in mean),
            latents_std=None if std is None else tuple(float(v) for v in std),
            scenario=field("scenario", _optional(_is_text), "a file name or null"),
        )


def _is_text(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _is_size(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_object(value: Any) -> bool:
    return isinstance(value, dict)


def _is_numbers(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in value
    )


def _optional(check: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda value: value is None or check(value)


# ---------------------------------------------------------------------------------------------
# Opening
# ---------------------------------------------------------------------------------------------


@dataclass
class Parts:
    """A world's loaded components, before they are checked against each other and put on a device."""

    name: str
    transformer: WanTransformer3DModel
    vae: AutoencoderKLWan
    text: TextEncoder
    engine: EngineConfig
    height: int
    width: int
    latents_mean: Sequence[float]
    latents_std: Sequence[float]
    source: str = ""
    scenario: str | None = None
    notes: list[str] = field(default_factory=list)  # what loading chose, for the user to read


@dataclass(frozen=True)
class LoadOptions:
    """How to read a model's files: which settings, which checkpoint entry, what to add or swap."""

    checkpoint: str | Path | None = None  # generator weights to load over the folder's transformer
    preset: str | None = None  # a family's settings (worldsim.families); else detected from the checkpoint
    checkpoint_entry: str | None = None  # generator or generator_ema; else the family's, else generator_ema
    lora: str | Path | None = None  # a LoRA adapter merged into the transformer (LongLive's lora.pt)
    text_offload: str | None = None  # off, swap or cpu (models.text.UMT5TextEncoder); default: swap on CUDA
    decoder: str = "vae"  # "vae", or "taehv:PATH" for TAEHV's fast decoder
    size: tuple[int, int] | None = None  # video (height, width) for a Wan folder; default 480 x 832


def load(
    name_or_path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    checkpoint: str | Path | None = None,
    attention: str = "sdpa",
    options: LoadOptions | None = None,
) -> World:
    """Open a bundle by built-in name or folder path, a diffusers Wan2.1 pipeline folder, or an
    original-format Wan2.1 folder (``models.original_wan``), with `options` (``LoadOptions``)."""
    options = options or LoadOptions()
    if checkpoint is not None:
        options = replace(options, checkpoint=checkpoint)
    family = _family(options)
    path = _resolve(name_or_path)
    kind = folder_kind(path)
    if kind == "bundle":
        parts = _bundle_parts(path, device, dtype, options)
    elif kind == "diffusers":
        parts = _pipeline_parts(path, device, dtype, options)
    else:
        parts = _original_parts(path, device, dtype, options)
    if family is not None and (options.preset is not None or kind != "bundle"):
        parts.engine = family.config(parts.engine if kind == "bundle" else None)
        how = "asked for" if options.preset else f"detected from {Path(str(options.checkpoint)).name}"
        parts.notes.insert(0, f"preset {family.name} ({how}): {family.source}")
    if options.size is not None and kind != "bundle":
        parts.height, parts.width = options.size
    if options.lora is not None:
        lora = read_lora(options.lora)
        merged = merge_lora(parts.transformer, lora, str(options.lora))
        parts.notes.append(f"LoRA {options.lora}: {lora.describe()}, merged into {merged} layers")
    world = assemble_world(parts, device, dtype, attention)
    if options.decoder != "vae":
        world = _with_taehv(world, options.decoder)
    return world


FOLDER_KINDS = ("bundle", "diffusers", "original")


def folder_kind(path: Path) -> str:
    """What a model folder is: a worldsim bundle, a diffusers pipeline, or an original Wan2.1 folder.

    BundleError when it is none of them, or holds the marks of two (a folder half one format, half
    another would load half).
    """
    marks = {
        "bundle": [BUNDLE_FILE] if (path / BUNDLE_FILE).is_file() else [],
        "diffusers": ["model_index.json"] if (path / "model_index.json").is_file() else [],
        "original": [name for name in (original_wan.VAE_FILE, original_wan.T5_FILE)
                     if (path / name).is_file()] + (["config.json (WanModel)"]
                                                     if original_wan.is_original_folder(path) else []),
    }  # fmt: skip
    found = [kind for kind in FOLDER_KINDS if marks[kind]]
    if len(found) > 1:
        described = "; ".join(f"{kind}: {', '.join(marks[kind])}" for kind in found)
        raise BundleError(f"{path} mixes model formats ({described}): point at a folder of one of them")
    if not found:
        raise BundleError(
            f"{path} is neither a worldsim bundle (no {BUNDLE_FILE}), nor a diffusers pipeline folder "
            f"(no model_index.json), nor an original Wan2.1 folder (no {original_wan.VAE_FILE}, "
            f"{original_wan.T5_FILE}, or WanModel config.json)"
        )
    return found[0]


def _family(options: LoadOptions) -> Family | None:
    if options.preset is not None:
        try:
            return family_of(options.preset)
        except ValueError as err:
            raise BundleError(str(err)) from err
    return detect_family(options.checkpoint) if options.checkpoint is not None else None


def _load_checkpoint(transformer: WanTransformer3DModel, options: LoadOptions, notes: list[str]) -> None:
    """Load the generator checkpoint of `options`, if any, choosing its entry; notes say which."""
    if options.checkpoint is None:
        return
    family = _family(options)
    entry = options.checkpoint_entry or (family.entry if family else None)
    try:
        used = load_generator_checkpoint(transformer, options.checkpoint, entry=entry)
    except CheckpointError as err:
        if entry is not None and options.checkpoint_entry is None and "has no entry" in str(err):
            used = load_generator_checkpoint(transformer, options.checkpoint)  # the family's is not there
        else:
            raise
    why = (
        "asked for"
        if options.checkpoint_entry
        else f"{family.name}'s own inference loads it"
        if family
        else "default"
    )
    notes.append(
        f"checkpoint {options.checkpoint}: "
        + (f"entry {used!r} ({why})" if used else "a flat state dict (no generator entries)")
    )


def _with_taehv(world: World, spec: str) -> World:
    kind, _, path = spec.partition(":")
    if kind != "taehv" or not path:
        raise BundleError(f"unknown decoder {spec!r} (use vae, or taehv:PATH to a taew2_1.pth)")
    if world.latent_channels != 16:
        raise BundleError(
            f"TAEHV decodes Wan's 16-channel latents; this model's have {world.latent_channels}"
        )
    decoder = load_taehv(path)
    vae_decoder = world.decoder
    fast = StreamingTAEHV(decoder.to(world.model.device), vae_decoder.vae, vae_decoder.mean, vae_decoder.std)
    world.decoder = fast  # type: ignore[assignment]
    world.notes.append(f"decoder: TAEHV from {path}")
    return world


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
    parts = Parts(
        f"random-{preset}", transformer, vae, text, spec.engine, spec.height, spec.width,
        spec.latents_mean, spec.latents_std,
    )  # fmt: skip
    return assemble_world(parts, device, dtype, attention)


def assemble_world(
    parts: Parts,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    attention: str = "sdpa",
) -> World:
    """Put loaded components together on a device and dtype, checking that they fit each other."""
    transformer = (
        cast_module(parts.transformer, dtype, device, keep_fp32=FP32_MODULES).eval().requires_grad_(False)
    )
    vae = cast_module(parts.vae, dtype, device).eval().requires_grad_(False)
    text_dim = transformer.config.text_dim
    if parts.text.dim != text_dim:
        raise BundleError(
            f"the text encoder gives {parts.text.dim}-wide states but the transformer expects {text_dim}"
        )
    if vae.config.z_dim != transformer.config.in_channels:
        raise BundleError(
            f"the VAE has {vae.config.z_dim} latent channels "
            f"but the transformer takes {transformer.config.in_channels}"
        )
    try:
        return World(
            name=parts.name,
            model=CausalWanTransformer(transformer, attention=attention),
            decoder=StreamingDecoder(vae, list(parts.latents_mean), list(parts.latents_std)),
            text_encoder=CachedTextEncoder(parts.text),
            config=parts.engine,
            height=parts.height,
            width=parts.width,
            source=parts.source,
            scenario=parts.scenario,
            notes=list(parts.notes),
        )
    except ValueError as err:  # sizes that do not fit the decoder, latent statistics of the wrong length
        raise BundleError(f"{parts.source or parts.name}: {err}") from err


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


def _bundle_parts(
    folder: Path, device: str | torch.device, dtype: torch.dtype, options: LoadOptions
) -> Parts:
    spec = BundleSpec.read(folder)
    scenario = None
    if spec.scenario is not None:
        if not (folder / spec.scenario).is_file():
            raise BundleError(
                f"{folder / BUNDLE_FILE} names scenario {spec.scenario!r}, which is not in the bundle"
            )
        scenario = str(folder / spec.scenario)
    transformer = load_diffusers_transformer(folder / spec.transformer, torch_dtype=torch.float32)
    if options.checkpoint is None and spec.generator_checkpoint is not None:
        options = replace(options, checkpoint=folder / spec.generator_checkpoint)
    notes: list[str] = []
    _load_checkpoint(transformer, options, notes)
    vae = load_vae_folder(folder / spec.vae)
    try:
        text = text_encoder_from_spec(
            spec.text_encoder, folder, device, _text_dtype(device, dtype), _offload(options, device)
        )
    except TextEncoderError as err:
        raise BundleError(f"{folder / BUNDLE_FILE}: {err}") from err
    return Parts(
        spec.name, transformer, vae, text, spec.engine, spec.height, spec.width,
        spec.latents_mean or vae.config.latents_mean, spec.latents_std or vae.config.latents_std,
        source=str(folder), scenario=scenario, notes=notes,
    )  # fmt: skip


def _pipeline_parts(
    folder: Path, device: str | torch.device, dtype: torch.dtype, options: LoadOptions
) -> Parts:
    transformer = load_diffusers_transformer(folder / "transformer", torch_dtype=torch.float32)
    notes: list[str] = []
    _load_checkpoint(transformer, options, notes)
    vae = load_vae_folder(folder / "vae")
    umt5 = {"kind": "umt5", "path": "text_encoder", "tokenizer": "tokenizer"}
    try:
        text = text_encoder_from_spec(
            umt5, folder, device, _text_dtype(device, dtype), _offload(options, device)
        )
    except TextEncoderError as err:
        raise BundleError(str(err)) from err
    spec = PRESETS["wan-1.3b"]
    return Parts(
        folder.name, transformer, vae, text, spec.engine, spec.height, spec.width,
        vae.config.latents_mean, vae.config.latents_std, source=str(folder), notes=notes,
    )  # fmt: skip


def _original_parts(
    folder: Path, device: str | torch.device, dtype: torch.dtype, options: LoadOptions
) -> Parts:
    """An original-format Wan2.1 folder: every file it needs there, each read and checked."""
    needed = [
        original_wan.CONFIG_FILE,
        original_wan.VAE_FILE,
        original_wan.T5_FILE,
        original_wan.TOKENIZER_FOLDER,
    ]
    missing = [name for name in needed if not (folder / name).exists()]
    if missing:
        raise BundleError(f"{folder} is an original Wan2.1 folder but lacks {', '.join(missing)}")
    transformer = original_wan.load_original_transformer(folder)
    notes: list[str] = [f"original Wan2.1 folder {folder}"]
    _load_checkpoint(transformer, options, notes)
    vae = original_wan.load_original_vae(folder / original_wan.VAE_FILE)
    encoder = original_wan.load_original_umt5(folder / original_wan.T5_FILE).to(_text_dtype(device, dtype))
    try:
        tokenizer = load_tokenizer(folder / original_wan.TOKENIZER_FOLDER)
    except (OSError, ValueError) as err:
        raise BundleError(
            f"cannot load the tokenizer in {folder / original_wan.TOKENIZER_FOLDER}: {err}"
        ) from err
    text = UMT5TextEncoder(encoder, tokenizer, 512, device, _offload(options, device))
    spec = PRESETS["wan-1.3b"]
    return Parts(
        folder.name, transformer, vae, text, spec.engine, spec.height, spec.width,
        vae.config.latents_mean, vae.config.latents_std, source=str(folder), notes=notes,
    )  # fmt: skip


def _text_dtype(device: str | torch.device, dtype: torch.dtype) -> torch.dtype:
    """UMT5 runs in float32, as Wan runs it, except on a GPU at a lower precision (11 GB in bfloat16)."""
    return dtype if torch.device(device).type == "cuda" else torch.float32


def _offload(options: LoadOptions, device: str | torch.device) -> str:
    """The text offload asked for, else swap on CUDA (the encoder leaves the GPU between prompts)."""
    if options.text_offload is not None:
        if options.text_offload not in TEXT_OFFLOAD:
            raise BundleError(
                f"unknown text offload {options.text_offload!r} (known: {', '.join(TEXT_OFFLOAD)})"
            )
        return options.text_offload
    return "swap" if torch.device(device).type == "cuda" else "off"


def load_vae_folder(folder: Path) -> AutoencoderKLWan:
    """An ``AutoencoderKLWan`` from a diffusers folder, in float32; BundleError if it is missing or broken."""
    if not (folder / "config.json").is_file():
        raise BundleError(
            f"no VAE at {folder} (expected a diffusers AutoencoderKLWan folder with config.json)"
        )
    try:
        vae: AutoencoderKLWan = AutoencoderKLWan.from_pretrained(
            folder, local_files_only=True, torch_dtype=torch.float32, low_cpu_mem_usage=False
        )
    except (OSError, ValueError, RuntimeError) as err:
        raise BundleError(f"cannot load the VAE from {folder}: {err}") from err
    require_finite(vae.state_dict(), f"the VAE in {folder}")
    return vae


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------


def save_bundle(
    folder: str | Path,
    transformer: WanTransformer3DModel,
    vae: AutoencoderKLWan,
    text_encoder: dict[str, Any],
    engine: EngineConfig,
    height: int,
    width: int,
    name: str,
    latents_mean: Sequence[float] | None = None,
    latents_std: Sequence[float] | None = None,
    scenario: str | None = None,
) -> Path:
    """Write a bundle folder (safetensors weights and worldsim.json) that `load` opens.

    `scenario` names a scenario file the caller puts into the folder.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    transformer.save_pretrained(folder / "transformer", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    spec: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "version": 1,
        "name": name,
        "height": height,
        "width": width,
        "transformer": "transformer",
        "vae": "vae",
        "text_encoder": text_encoder,
        "engine": engine.to_dict(),
    }
    if scenario is not None:
        spec["scenario"] = scenario
    if latents_mean is not None and latents_std is not None:
        spec["latents_mean"] = [float(v) for v in latents_mean]
        spec["latents_std"] = [float(v) for v in latents_std]
    (folder / BUNDLE_FILE).write_text(json.dumps(spec, indent=2) + "\n")
    return folder
