"""`worldsim inspect PATH`: what a model folder or weights file is, read without loading it onto a device.

The first thing to run when something does not load: it names the format, the parameter naming, the
dtype and size, the entries a checkpoint holds, the family preset a checkpoint's name gives, and
what is missing, and ends with one verdict line. Safetensors are read from their headers, pickles
memory-mapped (``torch.load(mmap=True, weights_only=True)``), so even 11 GB files answer at once.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from models import original_wan
from models.checkpoint import (
    GENERATOR_ENTRIES,
    CheckpointError,
    describe_transformer,
    load_tensor_file,
    original_to_diffusers_name,
    strip_wrapper_prefixes,
)
from worldsim.bundle import BUNDLE_FILE, BundleError, BundleSpec, folder_kind
from worldsim.families import detect_family


@dataclass
class Report:
    """What inspect found: lines to show, a verdict, and whether worldsim can use the thing."""

    path: Path
    lines: list[str] = field(default_factory=list)
    verdict: str = ""
    usable: bool = False

    def text(self) -> str:
        """The report as the command prints it."""
        return "\n".join([f"{self.path}:", *(f"  {line}" for line in self.lines), f"verdict: {self.verdict}"])


@dataclass(frozen=True)
class Tensors:
    """Names, shapes and dtypes of a file's tensors (no data read)."""

    shapes: dict[str, tuple[int, ...]]
    dtypes: dict[str, str]
    entries: tuple[str, ...] = ()  # a nested checkpoint's top-level keys (generator, critic, step, ...)

    @property
    def parameters(self) -> int:
        """How many numbers the tensors hold."""
        total = 0
        for shape in self.shapes.values():
            count = 1
            for size in shape:
                count *= size
            total += count
        return total

    def dtype(self) -> str:
        """The dtypes, most common first."""
        counts: dict[str, int] = {}
        for dtype in self.dtypes.values():
            counts[dtype] = counts.get(dtype, 0) + 1
        return ", ".join(sorted(counts, key=lambda d: -counts[d]))

    def summary(self) -> str:
        """E.g. '825 tensors, 1.42 B parameters, bfloat16'."""
        return f"{len(self.shapes)} tensors, {_count(self.parameters)} parameters, {self.dtype()}"


def _count(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return str(n)


def inspect_path(path: str | Path) -> Report:
    """Describe a model folder or a weights file."""
    path = Path(path)
    report = Report(path)
    try:
        if path.is_dir():
            _inspect_folder(path, report)
        elif path.is_file():
            _inspect_file(path, report)
        else:
            report.verdict = "no such file or folder"
    except (CheckpointError, BundleError, OSError, ValueError) as err:
        report.verdict = f"cannot be used: {err}"
        report.usable = False
    return report


# ---------------------------------------------------------------------------------------------
# Folders
# ---------------------------------------------------------------------------------------------


def _inspect_folder(folder: Path, report: Report) -> None:
    kind = folder_kind(folder)
    if kind == "bundle":
        spec = BundleSpec.read(folder)
        report.lines.append(
            f"format: worldsim bundle {spec.name!r} ({BUNDLE_FILE}), video {spec.width}x{spec.height}"
        )
        engine = spec.engine
        report.lines.append(
            f"engine: blocks of {engine.block_frames}, window {engine.window_frames}, sink "
            f"{engine.sink_frames}, {len(engine.denoising_steps)} steps, shift {engine.shift:g}, "
            f"guidance {engine.guidance_scale:g}"
        )
        missing = _weights_lines(folder / spec.transformer, "transformer", report)
        missing += _weights_lines(folder / spec.vae, "VAE", report)
        report.lines.append(f"text encoder: {spec.text_encoder.get('kind')}")
        if spec.scenario:
            report.lines.append(f"scenario: {spec.scenario}")
        _verdict(report, f"a worldsim bundle; play it with --model {folder}", missing)
    elif kind == "diffusers":
        index = json.loads((folder / "model_index.json").read_text())
        report.lines.append(f"format: diffusers pipeline ({index.get('_class_name', '?')})")
        missing = _weights_lines(folder / "transformer", "transformer", report)
        missing += _weights_lines(folder / "vae", "VAE", report)
        missing += [name for name in ("text_encoder", "tokenizer") if not (folder / name).is_dir()]
        _verdict(report, f"a diffusers Wan2.1 pipeline folder; use --model {folder}", missing)
    else:
        _inspect_original(folder, report)


def _inspect_original(folder: Path, report: Report) -> None:
    report.lines.append("format: original Wan2.1 folder (Wan's own names)")
    missing = []
    config_path = folder / original_wan.CONFIG_FILE
    if config_path.is_file():
        config = json.loads(config_path.read_text())
        report.lines.append(
            f"config.json: {config.get('model_type', '?')}, dim {config.get('dim')}, "
            f"{config.get('num_layers')} layers, {config.get('num_heads')} heads"
        )
        if config.get("model_type", "t2v") != "t2v":
            report.verdict = (
                f"cannot be used: a {config.get('model_type')!r} model; worldsim runs text-to-video"
            )
            return
    else:
        missing.append(original_wan.CONFIG_FILE)
    missing += _weights_lines(folder, "transformer", report, original=True)
    for name, what in ((original_wan.VAE_FILE, "VAE"), (original_wan.T5_FILE, "text encoder (UMT5)")):
        if (folder / name).is_file():
            tensors = read_tensors(folder / name)
            report.lines.append(f"{name}: {what}, {tensors.summary()}")
        else:
            missing.append(name)
    if not (folder / original_wan.TOKENIZER_FOLDER).is_dir():
        missing.append(original_wan.TOKENIZER_FOLDER + "/")
    _verdict(report, f"an original Wan2.1-T2V folder; use --model {folder} (with --checkpoint FILE)", missing)


def _weights_lines(folder: Path, what: str, report: Report, original: bool = False) -> list[str]:
    """A line about a diffusers-layout weights folder; the names of what is missing."""
    single = folder / "diffusion_pytorch_model.safetensors"
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        absent = [shard for shard in shards if not (folder / shard).is_file()]
        if absent:
            return [str(folder / shard) for shard in absent]
        tensors = _merge([read_tensors(folder / shard) for shard in shards])
        where = f"{len(shards)} shards"
    elif single.is_file():
        tensors, where = read_tensors(single), single.name
    elif (folder / "config.json").is_file() and not original:
        report.lines.append(f"{what}: {folder.name}/ (weights not in safetensors)")
        return []
    else:
        return [f"{folder.name}/ {what} weights"]
    if what == "transformer":
        naming, size = _naming(tensors.shapes), describe_transformer(tensors.shapes)
        report.lines.append(f"{what}: {where}, {naming} names, {tensors.summary()}, {size}")
    else:
        report.lines.append(f"{what}: {where}, {tensors.summary()}")
    return []


def _verdict(report: Report, usable: str, missing: list[str]) -> None:
    if missing:
        report.verdict = f"cannot be used: missing {', '.join(missing)}"
    else:
        report.verdict, report.usable = usable, True


# ---------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------


def read_tensors(path: Path) -> Tensors:
    """The tensors' names, shapes and dtypes of a safetensors file (header) or a pickle (memory-mapped)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as opened:
                shapes = {k: tuple(opened.get_slice(k).get_shape()) for k in opened.keys()}  # noqa: SIM118
                dtypes = {k: str(opened.get_slice(k).get_dtype()) for k in opened.keys()}  # noqa: SIM118
        except Exception as err:
            raise CheckpointError(f"cannot read {path} as safetensors: {err}") from err
        return Tensors(shapes, {k: _dtype_name(v) for k, v in dtypes.items()})
    obj = load_tensor_file(path, mmap=True)
    flat = _flatten(obj)
    nested = isinstance(obj, Mapping) and any(isinstance(v, Mapping) for v in obj.values())
    return Tensors(
        {k: tuple(t.shape) for k, t in flat.items()},
        {k: str(t.dtype).removeprefix("torch.") for k, t in flat.items()},
        tuple(str(k) for k in obj) if nested else (),
    )


def _dtype_name(name: str) -> str:
    return {"F32": "float32", "BF16": "bfloat16", "F16": "float16", "I64": "int64"}.get(name, name.lower())


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts of tensors as one flat dict with dotted keys (entries kept as prefixes)."""
    flat: dict[str, Any] = {}
    if isinstance(obj, Mapping):
        for key, value in obj.items():
            flat |= _flatten(value, f"{prefix}{key}.")
    elif hasattr(obj, "shape"):
        flat[prefix[:-1]] = obj
    return flat


def _merge(parts: list[Tensors]) -> Tensors:
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    for part in parts:
        shapes |= part.shapes
        dtypes |= part.dtypes
    return Tensors(shapes, dtypes)


def _naming(shapes: Mapping[str, Any]) -> str:
    """Whether transformer weights use Wan's original names or diffusers' (after wrapper prefixes)."""
    names = list(strip_wrapper_prefixes(dict(shapes)))
    original = sum(1 for n in names if _is_original(n))
    return "original Wan" if original >= len(names) / 2 else "diffusers"


def _is_original(name: str) -> bool:
    try:
        return original_to_diffusers_name(name) != name or name.startswith("patch_embedding")
    except CheckpointError:
        return False


def _inspect_file(path: Path, report: Report) -> None:
    tensors = read_tensors(path)
    top = list(tensors.entries) or sorted({name.split(".")[0] for name in tensors.shapes})
    entries = [e for e in GENERATOR_ENTRIES if e in top]
    family = detect_family(path)
    if any(".lora_A" in name or ".lora_B" in name for name in tensors.shapes):
        ranks = sorted({shape[0] for name, shape in tensors.shapes.items() if ".lora_A" in name})
        alpha = any(name.endswith(".alpha") for name in tensors.shapes)
        report.lines.append(
            f"format: LoRA adapter, {tensors.summary()}, rank {', '.join(map(str, ranks))}, "
            + ("alpha in the file" if alpha else "no alpha in the file (alpha = rank)")
        )
        report.verdict, report.usable = f"a LoRA adapter; add it with --lora {path} (LongLive)", True
        return
    if any(name.startswith("decoder.") for name in tensors.shapes) and "decoder.1.weight" in tensors.shapes:
        report.lines.append(f"format: TAEHV tiny autoencoder, {tensors.summary()}")
        report.verdict, report.usable = f"a TAEHV decoder; use it with --decoder taehv:{path}", True
        return
    if "encoder.conv1.weight" in tensors.shapes and "conv2.weight" in tensors.shapes:
        report.lines.append(f"format: Wan VAE in Wan's names ({original_wan.VAE_FILE}), {tensors.summary()}")
        report.verdict, report.usable = "a Wan2.1 VAE; it belongs in an original Wan2.1 folder", True
        return
    if "token_embedding.weight" in tensors.shapes:
        report.lines.append(f"format: Wan's T5 text encoder ({original_wan.T5_FILE}), {tensors.summary()}")
        report.verdict, report.usable = (
            "Wan's UMT5 text encoder; it belongs in an original Wan2.1 folder",
            True,
        )
        return
    generator = {n: s for n, s in tensors.shapes.items() if not entries or n.split(".")[0] == (entries[0])}
    if entries:
        others = [name for name in top if name not in entries]
        report.lines.append(
            f"format: training checkpoint with entries {', '.join(entries)}"
            + (f" (and {', '.join(others)})" if others else "")
        )
        generator = {n.split(".", 1)[1]: s for n, s in generator.items()}
    else:
        report.lines.append("format: a flat state dict")
    if not any(re.search(r"(^|\.)blocks\.\d+\.", name) for name in generator):
        report.verdict = "cannot be used: not a Wan transformer, LoRA, VAE, T5 or TAEHV file"
        return
    report.lines.append(
        f"generator: {_naming(generator)} names"
        + (", FSDP-wrapped" if any("_fsdp_wrapped_module" in n for n in generator) else "")
        + f", {tensors.summary()}, {describe_transformer(generator)}"
    )
    image = [n for n in generator if "img_emb" in n or ".k_img." in n]
    if image:
        report.verdict = "cannot be used: an image-to-video model; worldsim runs text-to-video Wan2.1"
        return
    if family is not None:
        report.lines.append(f"preset: {family.name} (from the file's name): {family.source}")
        report.lines.append(f"entry its family's inference loads: {family.entry}")
    else:
        report.lines.append("preset: not detected from the name; choose one with --preset")
    report.usable = True
    report.verdict = f"generator weights; use --checkpoint {path}" + (
        f" (preset {family.name})" if family else " with --preset FAMILY"
    )
