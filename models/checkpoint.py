"""Loading transformer weights into diffusers' ``WanTransformer3DModel``, every key and shape checked.

Two sources are supported:

- diffusers folders: ``config.json`` plus ``diffusion_pytorch_model.safetensors`` (or its sharded
  ``.index.json`` form, or ``diffusion_pytorch_model.bin``), either the transformer folder itself or a
  pipeline folder with a ``transformer/`` subfolder;
- generator checkpoints in the original Wan2.1 naming (Wan2.1, arXiv 2503.20314, ``wan/modules/model.py``),
  as written by Self-Forcing (arXiv 2506.08009) and the models trained with its code. Such a ``.pt`` file is
  a pickled dict ``{"generator": state_dict, "generator_ema": state_dict, ...}`` (one of the two may be
  absent, and some files are the flat state dict itself); a ``.safetensors`` file holds the flat state
  dict. Keys are prefixed ``model.`` (the generator wraps the Wan network in an attribute ``model``) and,
  when saved from FSDP, carry ``_fsdp_wrapped_module.`` segments anywhere in the dotted path.

Original Wan2.1 names (text-to-video, no image branch) and their diffusers counterparts:

============================================  ==================================================
original                                      diffusers
============================================  ==================================================
``patch_embedding.*``                         ``patch_embedding.*``
``text_embedding.{0,2}.*``                    ``condition_embedder.text_embedder.linear_{1,2}.*``
``time_embedding.{0,2}.*``                    ``condition_embedder.time_embedder.linear_{1,2}.*``
``time_projection.1.*``                       ``condition_embedder.time_proj.*``
``blocks.N.self_attn.{q,k,v,o}.*``            ``blocks.N.attn1.{to_q,to_k,to_v,to_out.0}.*``
``blocks.N.self_attn.norm_{q,k}.weight``      ``blocks.N.attn1.norm_{q,k}.weight``
``blocks.N.cross_attn.*``                     ``blocks.N.attn2.*`` (same renames as above)
``blocks.N.norm3.*``                          ``blocks.N.norm2.*`` (the affine cross-attention norm)
``blocks.N.ffn.0.*`` / ``blocks.N.ffn.2.*``   ``blocks.N.ffn.net.0.proj.*`` / ``blocks.N.ffn.net.2.*``
``blocks.N.modulation``  (1, 6, dim)          ``blocks.N.scale_shift_table``
``head.head.*``                               ``proj_out.*``
``head.modulation``  (1, 2, dim)              ``scale_shift_table``
============================================  ==================================================

In the original, ``norm1``/``norm2`` of a block and the head's norm have no parameters, so only ``norm3``
is renamed. Pickles are always read with ``torch.load(..., weights_only=True)``: a file that needs
arbitrary Python objects is refused, never executed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import load_file
from torch import Tensor

from models.precision import FP32_MODULES, cast_module

__all__ = [
    "CheckpointError",
    "GeneratorFile",
    "convert_original_state_dict",
    "describe_transformer",
    "load_diffusers_transformer",
    "load_generator_checkpoint",
    "load_tensor_file",
    "original_to_diffusers_name",
    "read_folder_weights",
    "read_generator",
    "require_finite",
    "strip_wrapper_prefixes",
]

PathLike = str | os.PathLike[str]


class CheckpointError(ValueError):
    """A checkpoint file or folder that cannot be read or does not match the model."""


# ---------------------------------------------------------------------------------------------
# Original Wan2.1 names -> diffusers names
# ---------------------------------------------------------------------------------------------

# Leaves that a renamed module (Linear, Conv3d, LayerNorm, RMSNorm) may carry.
_MODULE_LEAVES = ("weight", "bias")

# Modules outside the blocks: original module path -> diffusers module path.
_TOP_MODULES: dict[str, str] = {
    "patch_embedding": "patch_embedding",
    "text_embedding.0": "condition_embedder.text_embedder.linear_1",
    "text_embedding.2": "condition_embedder.text_embedder.linear_2",
    "time_embedding.0": "condition_embedder.time_embedder.linear_1",
    "time_embedding.2": "condition_embedder.time_embedder.linear_2",
    "time_projection.1": "condition_embedder.time_proj",
    "head.head": "proj_out",
}

# Bare parameters outside the blocks.
_TOP_PARAMETERS: dict[str, str] = {"head.modulation": "scale_shift_table"}

# Sub-modules of an attention layer.
_ATTENTION_MODULES: dict[str, str] = {
    "q": "to_q",
    "k": "to_k",
    "v": "to_v",
    "o": "to_out.0",
    "norm_q": "norm_q",
    "norm_k": "norm_k",
}

# Modules inside ``blocks.N.``: original path -> diffusers path.
_BLOCK_MODULES: dict[str, str] = {
    **{f"self_attn.{name}": f"attn1.{target}" for name, target in _ATTENTION_MODULES.items()},
    **{f"cross_attn.{name}": f"attn2.{target}" for name, target in _ATTENTION_MODULES.items()},
    "norm3": "norm2",
    "ffn.0": "ffn.net.0.proj",
    "ffn.2": "ffn.net.2",
}

# Bare parameters inside ``blocks.N.``.
_BLOCK_PARAMETERS: dict[str, str] = {"modulation": "scale_shift_table"}

_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(.+)")

# Path segments that training wrappers insert (FSDP, activation checkpointing, torch.compile).
_WRAPPER_SEGMENTS = frozenset({"_fsdp_wrapped_module", "_checkpoint_wrapped_module", "_orig_mod"})

# How many offending names an error message lists.
_LISTED = 5


def _split_name(name: str) -> tuple[str, str, Mapping[str, str], Mapping[str, str]]:
    """A name's block prefix ("blocks.3." or ""), the rest, and the name tables that apply to it."""
    match = _BLOCK_KEY.fullmatch(name)
    if match is not None:
        return f"blocks.{match.group(1)}.", match.group(2), _BLOCK_MODULES, _BLOCK_PARAMETERS
    return "", name, _TOP_MODULES, _TOP_PARAMETERS


def original_to_diffusers_name(name: str) -> str:
    """Diffusers name of one parameter named the original Wan2.1 way; CheckpointError if unknown."""
    prefix, rest, modules, parameters = _split_name(name)

    if rest in parameters:
        return prefix + parameters[rest]
    module, _, leaf = rest.rpartition(".")
    if leaf in _MODULE_LEAVES and module in modules:
        return f"{prefix}{modules[module]}.{leaf}"
    raise CheckpointError(f"not a Wan2.1 text-to-video transformer parameter: {name!r}")


def strip_wrapper_prefixes(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Copy of ``state_dict`` without wrapper path segments and the generator's leading ``model.``."""
    stripped: dict[str, Tensor] = {}
    sources: dict[str, str] = {}
    clashes: list[str] = []
    for key, value in state_dict.items():
        parts = [part for part in key.split(".") if part not in _WRAPPER_SEGMENTS]
        if parts and parts[0] == "model":
            parts = parts[1:]
        name = ".".join(parts)
        if name in stripped:
            clashes.append(f"{sources[name]!r} and {key!r} -> {name!r}")
            continue
        stripped[name] = value
        sources[name] = key
    if clashes:
        raise CheckpointError(
            f"{_count(len(clashes), 'pair')} of keys collide once wrapper prefixes are removed: "
            f"{_listing(clashes, quote=False)}"
        )
    return stripped


# ---------------------------------------------------------------------------------------------
# Checking a renamed state dict against the model
# ---------------------------------------------------------------------------------------------


def _count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"


def _listing(items: list[str], *, quote: bool = True) -> str:
    shown = [repr(item) if quote else item for item in items[:_LISTED]]
    rest = len(items) - len(shown)
    return ", ".join(shown) + (f", ... and {rest} more" if rest > 0 else "")


def _shape(shape: Iterable[int]) -> tuple[int, ...]:
    return tuple(int(size) for size in shape)


def _diffusers_to_original_name(name: str) -> str | None:
    """Original name of a diffusers parameter, for error messages; None if it has none."""
    prefix, rest, modules, parameters = _split_name(name)
    for original, target in parameters.items():
        if rest == target:
            return prefix + original
    module, _, leaf = rest.rpartition(".")
    for original, target in modules.items():
        if module == target and leaf in _MODULE_LEAVES:
            return f"{prefix}{original}.{leaf}"
    return None


def _checked(
    renamed: Mapping[str, tuple[str, Tensor]],
    unknown: list[str],
    reference: Mapping[str, torch.Size],
    *,
    original_naming: bool = False,
) -> dict[str, Tensor]:
    """Tensors of ``renamed`` (target -> (source name, tensor)) after checking it covers ``reference``."""
    unexpected = sorted(
        unknown + [source for target, (source, _) in renamed.items() if target not in reference]
    )
    missing = []
    for name in sorted(name for name in reference if name not in renamed):
        original = _diffusers_to_original_name(name) if original_naming else None
        missing.append(repr(name) if original in (None, name) else f"{name!r} (checkpoint name {original!r})")
    mismatched = []
    for target in sorted(renamed.keys() & reference.keys()):
        source, tensor = renamed[target]
        got, want = _shape(tensor.shape), _shape(reference[target])
        if got != want:
            origin = "" if source == target else f" (checkpoint name {source!r})"
            mismatched.append(f"{target!r}{origin}: checkpoint {got} vs model {want}")

    problems = []
    if unexpected:
        problems.append(
            f"{_count(len(unexpected), 'unexpected key')} (checkpoint names the model does not have): "
            f"{_listing(unexpected)}"
        )
    if missing:
        problems.append(
            f"{_count(len(missing), 'missing key')} (model names the checkpoint lacks): "
            f"{_listing(missing, quote=False)}"
        )
    if mismatched:
        count = _count(len(mismatched), "shape mismatch", "shape mismatches")
        problems.append(f"{count}: {_listing(mismatched, quote=False)}")
    if problems:
        raise CheckpointError(
            "state dict does not match WanTransformer3DModel:\n" + "\n".join(f"  {line}" for line in problems)
        )
    return {target: tensor for target, (_, tensor) in renamed.items()}


def require_finite(tensors: Mapping[str, Tensor], where: str) -> None:
    """CheckpointError naming the first tensor that holds NaN or Inf (garbled bytes load as such)."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{where}: tensor {name!r} holds {bad} NaN or Inf value{'s' if bad > 1 else ''} "
                f"(of {tensor.numel()}): the file is corrupt"
            )


def convert_original_state_dict(
    state_dict: Mapping[str, Tensor], reference: Mapping[str, torch.Size]
) -> dict[str, Tensor]:
    """Rename an original-format state dict (prefixes already stripped) and check it against ``reference``."""
    renamed: dict[str, tuple[str, Tensor]] = {}
    unknown: list[str] = []
    for name, tensor in state_dict.items():
        try:
            target = original_to_diffusers_name(name)
        except CheckpointError:
            unknown.append(name)
            continue
        if target in renamed:  # the table is one-to-one, so this only guards against edits to it
            raise CheckpointError(f"{renamed[target][0]!r} and {name!r} both map to {target!r}")
        renamed[target] = (name, tensor)
    return _checked(renamed, unknown, reference, original_naming=True)


def _detect_naming(
    keys: Iterable[str], reference: Mapping[str, torch.Size]
) -> Literal["original", "diffusers"]:
    """Which naming explains more of ``keys``; ties (nothing recognised) count as original."""
    as_is = renamed = 0
    for key in keys:
        as_is += key in reference
        with contextlib.suppress(CheckpointError):
            renamed += original_to_diffusers_name(key) in reference
    return "diffusers" if as_is > renamed else "original"


def _reference_shapes(transformer: torch.nn.Module) -> dict[str, torch.Size]:
    return {name: tensor.shape for name, tensor in transformer.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------

_PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
_SAFETENSORS_SUFFIX = ".safetensors"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _refusal_detail(exc: BaseException) -> str:
    """The informative part of torch's weights-only refusal, without its advice to load unsafely."""
    match = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\n\n|$)", str(exc), flags=re.DOTALL)
    if match is None:
        return _first_line(exc)
    return match.group(1).strip().split(". ")[0].rstrip(".")


def load_tensor_file(path: Path, mmap: bool = False) -> Any:
    """Deserialize one checkpoint file safely (pickles with weights_only=True); CheckpointError naming it.

    With `mmap`, a pickle's tensors are mapped from the file rather than read (for looking at shapes).
    """
    suffix = path.suffix.lower()
    if suffix == _SAFETENSORS_SUFFIX:
        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise CheckpointError(f"cannot read {path} as safetensors: {_first_line(exc)}") from exc
    if suffix in _PICKLE_SUFFIXES:
        try:
            try:
                return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
            except RuntimeError as exc:
                if not mmap or "mmap" not in str(exc):
                    raise
                return torch.load(path, map_location="cpu", weights_only=True)  # an old, unmappable format
        except Exception as exc:
            if "Weights only load failed" in str(exc):
                raise CheckpointError(
                    f"cannot read {path}: torch.load(weights_only=True) refused it ({_refusal_detail(exc)}); "
                    "the file is corrupt or holds Python objects other than tensors and plain containers, "
                    "which are never unpickled"
                ) from exc
            raise CheckpointError(f"cannot read {path}: {_first_line(exc)}") from exc
    raise CheckpointError(
        f"unsupported checkpoint file type {suffix or '(none)'!r} for {path}; expected one of "
        f"{', '.join((*_PICKLE_SUFFIXES, _SAFETENSORS_SUFFIX))}"
    )


def _require_tensor_dict(obj: object, where: str) -> dict[str, Tensor]:
    """``obj`` as a non-empty dict of named tensors, else CheckpointError naming ``where``."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where} holds a {type(obj).__name__}, not a dict of tensors")
    if not obj:
        raise CheckpointError(f"{where} holds an empty dict, no tensors")
    bad = [
        f"{key!r} ({type(value).__name__})"
        for key, value in obj.items()
        if not isinstance(key, str) or not isinstance(value, Tensor)
    ]
    if bad:
        raise CheckpointError(
            f"{where} is not a dict of named tensors: {_count(len(bad), 'entry', 'entries')} "
            f"of another kind: {_listing(bad, quote=False)}"
        )
    return dict(obj)


GENERATOR_ENTRIES = ("generator_ema", "generator")  # in the order taken when no entry is asked for


@dataclass(frozen=True)
class GeneratorFile:
    """The generator weights read from a checkpoint file, and which entry of the file they are."""

    state: dict[str, Tensor]
    entry: str | None  # "generator" or "generator_ema"; None for a file that is the state dict itself
    entries: tuple[str, ...]  # the generator entries the file holds


def read_generator(path: PathLike, entry: str | None = None) -> GeneratorFile:
    """The generator state dict of a ``.pt``/``.pth``/``.bin`` or ``.safetensors`` checkpoint, on CPU.

    Self-Forcing-family training checkpoints hold ``generator`` and ``generator_ema`` (and more);
    `entry` chooses one, else ``generator_ema`` where both are there. Other files are the flat state
    dict itself.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no such checkpoint file: {path}")
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a directory, not a checkpoint file; pass a diffusers folder to "
            "load_diffusers_transformer (or WanTransformer3DModel.from_pretrained) instead"
        )
    obj = load_tensor_file(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a dict of tensors")
    entries = tuple(e for e in GENERATOR_ENTRIES if e in obj)
    if entry is not None and entry not in GENERATOR_ENTRIES:
        raise CheckpointError(f"unknown checkpoint entry {entry!r} (known: {', '.join(GENERATOR_ENTRIES)})")
    if entry is not None and entry not in obj:
        holds = ", ".join(entries) or "no generator entry: it is a flat state dict"
        raise CheckpointError(f"{path} has no entry {entry!r} ({holds})")
    if any(key.endswith("_lora") for key in obj) or any(".lora_A." in str(key) for key in obj):
        raise CheckpointError(f"{path} is a LoRA adapter, not generator weights: pass it with --lora")
    chosen = entry or (entries[0] if entries else None)
    if chosen is None:
        return GeneratorFile(_require_tensor_dict(obj, str(path)), None, ())
    return GeneratorFile(_require_tensor_dict(obj[chosen], f"entry {chosen!r} of {path}"), chosen, entries)


def describe_transformer(state: Mapping[str, Any]) -> str:
    """The size of a Wan transformer (a state dict, or names and shapes; either naming), e.g. 'dim 1536,
    30 layers (Wan2.1 1.3B)'."""
    blocks = {m.group(1) for key in state if (m := re.match(r"(?:.*\.)?blocks\.(\d+)\.", key))}
    dims = [getattr(t, "shape", t)[0] for key, t in state.items() if key.endswith("patch_embedding.weight")]
    if not dims:
        return f"{len(blocks)} layers"
    known = {(1536, 30): " (Wan2.1 1.3B)", (5120, 40): " (Wan2.1 14B)"}
    return f"dim {dims[0]}, {len(blocks)} layers{known.get((int(dims[0]), len(blocks)), '')}"


def _image_keys(state: Mapping[str, Tensor]) -> list[str]:
    """Keys only an image-to-video Wan has (its image embedder and image cross-attention)."""
    marks = ("img_emb", ".k_img.", ".v_img.", "add_k_proj", "image_embedder")
    return [key for key in state if any(mark in key for mark in marks)]


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_generator_checkpoint(
    transformer: WanTransformer3DModel, path: PathLike, *, entry: str | None = None
) -> str | None:
    """Load a generator checkpoint (original or diffusers naming) into ``transformer`` in place.

    Returns the entry read (``generator``, ``generator_ema``, or None for a flat file).
    """
    module = cast(torch.nn.Module, transformer)  # diffusers' lazy imports hide its base class from mypy
    read = read_generator(path, entry)
    require_finite(read.state, str(path))
    reference = _reference_shapes(module)
    try:
        state_dict = strip_wrapper_prefixes(read.state)
        if _image_keys(state_dict):
            raise CheckpointError(
                "an image-to-video model (it has image keys such as "
                f"{_image_keys(state_dict)[0]!r}); worldsim runs text-to-video Wan2.1 models"
            )
        width = [t.shape for k, t in state_dict.items() if k.endswith("patch_embedding.weight")]
        if width and width[0] != reference["patch_embedding.weight"]:  # another model size altogether
            ours, theirs = describe_transformer(reference), describe_transformer(state_dict)
            raise CheckpointError(f"a model of {theirs}, but the transformer it goes into has {ours}")
        if _detect_naming(state_dict, reference) == "diffusers":
            converted = _checked({name: (name, tensor) for name, tensor in state_dict.items()}, [], reference)
        else:
            converted = convert_original_state_dict(state_dict, reference)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from exc
    # Copies into the existing parameters, so each keeps its dtype and device.
    module.load_state_dict(converted, strict=True)
    return read.entry


_CONFIG_NAME = "config.json"
_WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
_WEIGHTS_INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
_PICKLE_WEIGHTS_NAME = "diffusion_pytorch_model.bin"


def _transformer_folder(folder: Path) -> Path:
    """``folder`` if it holds a model config, else its ``transformer/`` subfolder if that does."""
    if not folder.exists():
        raise CheckpointError(f"no such diffusers folder: {folder}")
    if not folder.is_dir():
        raise CheckpointError(
            f"{folder} is a file, not a diffusers folder; "
            "load checkpoint files with load_generator_checkpoint"
        )
    if (folder / _CONFIG_NAME).is_file():
        return folder
    subfolder = folder / "transformer"
    if (subfolder / _CONFIG_NAME).is_file():
        return subfolder
    raise CheckpointError(
        f"{folder} is not a diffusers transformer folder: no {_CONFIG_NAME} in it nor in {subfolder}"
    )


def _read_config(folder: Path) -> dict[str, Any]:
    path = folder / _CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {path}: {_first_line(exc)}") from exc
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} holds a JSON {type(config).__name__}, not an object")
    class_name = config.get("_class_name")
    if class_name is not None and class_name != WanTransformer3DModel.__name__:
        raise CheckpointError(
            f"{path} describes a {class_name}, not a {WanTransformer3DModel.__name__}; "
            "point at the transformer folder (or its pipeline folder)"
        )
    return config


def read_folder_weights(folder: Path) -> dict[str, Tensor]:
    """All tensors of a diffusers model folder: single file, sharded safetensors, or pickle."""
    single, index, pickled = (
        folder / _WEIGHTS_NAME,
        folder / _WEIGHTS_INDEX_NAME,
        folder / _PICKLE_WEIGHTS_NAME,
    )
    if single.is_file():
        return _require_tensor_dict(load_tensor_file(single), str(single))
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shard_names = list(dict.fromkeys(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"cannot read shard index {index}: {_first_line(exc)}") from exc
        tensors: dict[str, Tensor] = {}
        for shard_name in shard_names:
            shard = folder / shard_name
            if not shard.is_file():
                raise CheckpointError(f"{index} lists shard {shard_name!r}, which is not in {folder}")
            part = _require_tensor_dict(load_tensor_file(shard), str(shard))
            repeated = sorted(part.keys() & tensors.keys())
            if repeated:
                raise CheckpointError(f"{shard} repeats keys of an earlier shard: {_listing(repeated)}")
            tensors.update(part)
        return tensors
    if pickled.is_file():
        return _require_tensor_dict(load_tensor_file(pickled), str(pickled))
    raise CheckpointError(
        f"{folder} has no weights: looked for "
        f"{_WEIGHTS_NAME}, {_WEIGHTS_INDEX_NAME} and {_PICKLE_WEIGHTS_NAME}"
    )


def load_diffusers_transformer(
    folder: PathLike, *, torch_dtype: torch.dtype | None = None
) -> WanTransformer3DModel:
    """A ``WanTransformer3DModel`` from a diffusers transformer folder or a pipeline folder, fully checked."""
    if torch_dtype is not None and not (
        isinstance(torch_dtype, torch.dtype) and torch_dtype.is_floating_point
    ):
        raise TypeError(f"torch_dtype must be a floating torch.dtype or None, got {torch_dtype!r}")
    folder = _transformer_folder(Path(folder))
    config = _read_config(folder)
    weights = read_folder_weights(folder)
    require_finite(weights, f"weights in {folder}")
    try:
        # Built from its config and filled with load_state_dict rather than through from_pretrained, which
        # for this class needs the optional `accelerate` package; the result is the same model, with the
        # same float32 modules under a lower torch_dtype.
        transformer = WanTransformer3DModel.from_config(config)
    except Exception as exc:
        raise CheckpointError(
            f"{folder / _CONFIG_NAME} is not a valid {WanTransformer3DModel.__name__} config: "
            f"{_first_line(exc)}"
        ) from exc
    try:
        weights = _checked(
            {name: (name, tensor) for name, tensor in weights.items()}, [], _reference_shapes(transformer)
        )
    except CheckpointError as exc:
        raise CheckpointError(f"weights in {folder}: {exc}") from exc
    transformer.load_state_dict(weights, strict=True)
    if torch_dtype is not None:
        cast_module(transformer, torch_dtype, keep_fp32=FP32_MODULES)
    return transformer.eval()
