"""Tests for models/checkpoint.py: original-format and diffusers-format loading, and its errors."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from diffusers import WanTransformer3DModel
from safetensors.torch import save_file

from models.checkpoint import (
    CheckpointError,
    convert_original_state_dict,
    load_diffusers_transformer,
    load_generator_checkpoint,
    original_to_diffusers_name,
    read_generator,
    strip_wrapper_prefixes,
)
from tests.conftest import TINY_TRANSFORMER

TINY = TINY_TRANSFORMER


def make_model(seed: int, *, randomize: bool = False) -> WanTransformer3DModel:
    """Tiny model; ``randomize`` replaces every parameter (norm weights included) by random values."""
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**TINY)
    if randomize:
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.copy_(torch.randn_like(parameter) * 0.2)
    return model.eval()


# Diffusers -> original Wan2.1 names, written out independently of the module under test.
INVERSE_TOP_MODULES = {
    "patch_embedding": "patch_embedding",
    "condition_embedder.text_embedder.linear_1": "text_embedding.0",
    "condition_embedder.text_embedder.linear_2": "text_embedding.2",
    "condition_embedder.time_embedder.linear_1": "time_embedding.0",
    "condition_embedder.time_embedder.linear_2": "time_embedding.2",
    "condition_embedder.time_proj": "time_projection.1",
    "proj_out": "head.head",
}
INVERSE_BLOCK_MODULES = {
    "attn1.to_q": "self_attn.q",
    "attn1.to_k": "self_attn.k",
    "attn1.to_v": "self_attn.v",
    "attn1.to_out.0": "self_attn.o",
    "attn1.norm_q": "self_attn.norm_q",
    "attn1.norm_k": "self_attn.norm_k",
    "attn2.to_q": "cross_attn.q",
    "attn2.to_k": "cross_attn.k",
    "attn2.to_v": "cross_attn.v",
    "attn2.to_out.0": "cross_attn.o",
    "attn2.norm_q": "cross_attn.norm_q",
    "attn2.norm_k": "cross_attn.norm_k",
    "norm2": "norm3",
    "ffn.net.0.proj": "ffn.0",
    "ffn.net.2": "ffn.2",
}


def to_original_name(name: str) -> str:
    if name == "scale_shift_table":
        return "head.modulation"
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", name)
    if match:
        index, rest = match.groups()
        if rest == "scale_shift_table":
            return f"blocks.{index}.modulation"
        module, leaf = rest.rsplit(".", 1)
        return f"blocks.{index}.{INVERSE_BLOCK_MODULES[module]}.{leaf}"
    module, leaf = name.rsplit(".", 1)
    return f"{INVERSE_TOP_MODULES[module]}.{leaf}"


def original_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {to_original_name(k): v.clone() for k, v in model.state_dict().items()}


def reference_of(model: torch.nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items()}


def assert_same_parameters(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def forward(model: WanTransformer3DModel) -> torch.Tensor:
    generator = torch.Generator().manual_seed(123)
    hidden = torch.randn(1, 4, 3, 8, 8, generator=generator)
    text = torch.randn(1, 5, 16, generator=generator)
    with torch.no_grad():
        return model(hidden, torch.tensor([500.0]), text).sample


@pytest.fixture(scope="module")
def source() -> WanTransformer3DModel:
    return make_model(0, randomize=True)


@pytest.fixture
def target(source: WanTransformer3DModel) -> WanTransformer3DModel:
    model = make_model(1)
    fresh, src = model.state_dict(), source.state_dict()
    assert all(not torch.equal(fresh[k], src[k]) for k in src)  # loading must change every tensor
    return model


class Opaque:
    """Stands for any non-tensor object a pickle may carry."""


# ---------------------------------------------------------------------------------------------
# Name mapping and prefixes
# ---------------------------------------------------------------------------------------------


def test_original_names_of_tiny_model_are_as_expected(source: WanTransformer3DModel) -> None:
    names = set(original_state_dict(source))
    for name in [
        "patch_embedding.weight",
        "text_embedding.2.bias",
        "time_projection.1.weight",
        "blocks.0.self_attn.o.weight",
        "blocks.1.cross_attn.norm_k.weight",
        "blocks.1.norm3.bias",
        "blocks.0.ffn.0.weight",
        "blocks.1.modulation",
        "head.head.weight",
        "head.modulation",
    ]:
        assert name in names
    assert len(names) == len(source.state_dict())


@pytest.mark.parametrize(
    ("original", "diffusers"),
    [
        ("patch_embedding.bias", "patch_embedding.bias"),
        ("text_embedding.0.weight", "condition_embedder.text_embedder.linear_1.weight"),
        ("time_embedding.2.bias", "condition_embedder.time_embedder.linear_2.bias"),
        ("time_projection.1.weight", "condition_embedder.time_proj.weight"),
        ("blocks.3.self_attn.q.weight", "blocks.3.attn1.to_q.weight"),
        ("blocks.12.cross_attn.o.bias", "blocks.12.attn2.to_out.0.bias"),
        ("blocks.0.self_attn.norm_k.weight", "blocks.0.attn1.norm_k.weight"),
        ("blocks.7.norm3.weight", "blocks.7.norm2.weight"),
        ("blocks.7.ffn.0.bias", "blocks.7.ffn.net.0.proj.bias"),
        ("blocks.7.ffn.2.weight", "blocks.7.ffn.net.2.weight"),
        ("blocks.29.modulation", "blocks.29.scale_shift_table"),
        ("head.head.weight", "proj_out.weight"),
        ("head.modulation", "scale_shift_table"),
    ],
)
def test_original_to_diffusers_name(original: str, diffusers: str) -> None:
    assert original_to_diffusers_name(original) == diffusers


@pytest.mark.parametrize(
    "name",
    ["blocks.0.norm2.weight", "blocks.0.self_attn.x.weight", "img_emb.proj.0.weight", "head.norm.weight"],
)
def test_original_to_diffusers_name_rejects_unknown(name: str) -> None:
    with pytest.raises(CheckpointError, match=re.escape(repr(name))):
        original_to_diffusers_name(name)


def test_strip_wrapper_prefixes() -> None:
    t = torch.zeros(1)
    stripped = strip_wrapper_prefixes(
        {
            "model.head.modulation": t,
            "_fsdp_wrapped_module.model._fsdp_wrapped_module.blocks.0.modulation": t,
            "model.blocks.1._fsdp_wrapped_module.self_attn.q.weight": t,
            "patch_embedding.weight": t,
        }
    )
    assert list(stripped) == [
        "head.modulation",
        "blocks.0.modulation",
        "blocks.1.self_attn.q.weight",
        "patch_embedding.weight",
    ]


def test_strip_wrapper_prefixes_rejects_collisions() -> None:
    t = torch.zeros(1)
    with pytest.raises(CheckpointError, match="collide") as info:
        strip_wrapper_prefixes({"model.head.modulation": t, "head.modulation": t})
    assert "'head.modulation'" in str(info.value)


# ---------------------------------------------------------------------------------------------
# Loading generator checkpoints
# ---------------------------------------------------------------------------------------------


def test_roundtrip_self_forcing_pt(tmp_path: Path, source: WanTransformer3DModel, target) -> None:
    original = original_state_dict(source)
    path = tmp_path / "self_forcing.pt"
    torch.save(
        {
            "generator": {"model." + k: v for k, v in original.items()},
            "generator_ema": {"model._fsdp_wrapped_module." + k: v for k, v in original.items()},
        },
        path,
    )
    assert load_generator_checkpoint(target, path) == "generator_ema"
    assert_same_parameters(target, source)
    assert torch.equal(forward(target), forward(source))


def test_flat_pt_state_dict(tmp_path: Path, source: WanTransformer3DModel, target) -> None:
    path = tmp_path / "flat.pth"
    torch.save(original_state_dict(source), path)
    load_generator_checkpoint(target, path)
    assert_same_parameters(target, source)


def test_safetensors_flat_file(tmp_path: Path, source: WanTransformer3DModel, target) -> None:
    path = tmp_path / "generator.safetensors"
    save_file({"model." + k: v.contiguous() for k, v in original_state_dict(source).items()}, str(path))
    load_generator_checkpoint(target, path)
    assert_same_parameters(target, source)
    assert torch.equal(forward(target), forward(source))


def test_the_entry_is_chosen_and_reported(tmp_path: Path, source: WanTransformer3DModel) -> None:
    ema_model = make_model(2, randomize=True)
    path = tmp_path / "both.pt"
    torch.save(
        {
            "generator": {"model." + k: v for k, v in original_state_dict(source).items()},
            "generator_ema": {"model." + k: v for k, v in original_state_dict(ema_model).items()},
            "step": 1000,
        },
        path,
    )
    default, generator = make_model(1), make_model(1)
    assert load_generator_checkpoint(default, path) == "generator_ema"
    assert load_generator_checkpoint(generator, path, entry="generator") == "generator"
    assert_same_parameters(default, ema_model)
    assert_same_parameters(generator, source)
    raw = read_generator(path, "generator")
    assert raw.entries == ("generator_ema", "generator") and raw.entry == "generator"
    assert torch.equal(raw.state["model.head.modulation"], source.scale_shift_table)
    with pytest.raises(CheckpointError, match="unknown checkpoint entry 'critic'"):
        read_generator(path, "critic")


def test_only_generator_present_is_used_even_when_preferring_ema(tmp_path: Path, source, target) -> None:
    path = tmp_path / "generator_only.pt"
    torch.save({"generator": {"model." + k: v for k, v in original_state_dict(source).items()}}, path)
    assert load_generator_checkpoint(target, path) == "generator"
    assert_same_parameters(target, source)
    with pytest.raises(CheckpointError, match="has no entry 'generator_ema' \\(generator\\)"):
        read_generator(path, "generator_ema")


def test_diffusers_named_checkpoint_accepted(tmp_path: Path, source: WanTransformer3DModel, target) -> None:
    path = tmp_path / "diffusers_named.pt"
    torch.save({"generator_ema": {"model." + k: v for k, v in source.state_dict().items()}}, path)
    load_generator_checkpoint(target, path)
    assert_same_parameters(target, source)


def test_diffusers_named_checkpoint_is_checked(tmp_path: Path, source: WanTransformer3DModel, target) -> None:
    state = dict(source.state_dict())
    del state["proj_out.bias"]
    path = tmp_path / "diffusers_named.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"1 missing key .*'proj_out\.bias'"):
        load_generator_checkpoint(target, path)


def test_load_keeps_target_dtype(tmp_path: Path, source: WanTransformer3DModel) -> None:
    target = make_model(1).to(torch.bfloat16)
    path = tmp_path / "fp32.pt"
    torch.save({"generator": original_state_dict(source)}, path)
    load_generator_checkpoint(target, path)
    assert all(p.dtype == torch.bfloat16 for p in target.parameters())
    assert torch.equal(target.proj_out.weight, source.proj_out.weight.to(torch.bfloat16))


# ---------------------------------------------------------------------------------------------
# Checks against the model: missing, unexpected, mismatched
# ---------------------------------------------------------------------------------------------


def test_missing_key(tmp_path: Path, source: WanTransformer3DModel, target) -> None:
    state = original_state_dict(source)
    del state["blocks.1.norm3.weight"]
    path = tmp_path / "missing.pt"
    torch.save({"generator": state}, path)
    with pytest.raises(CheckpointError) as info:
        load_generator_checkpoint(target, path)
    message = str(info.value)
    assert str(path) in message
    assert "1 missing key" in message
    assert "'blocks.1.norm2.weight' (checkpoint name 'blocks.1.norm3.weight')" in message


def test_unexpected_key_reports_original_name(tmp_path: Path, source: WanTransformer3DModel, target) -> None:
    state = original_state_dict(source)
    state["blocks.0.self_attn.q_extra.weight"] = torch.zeros(3)
    state["blocks.5.self_attn.q.weight"] = torch.zeros(24, 24)  # valid name, block the model lacks
    path = tmp_path / "unexpected.pt"
    torch.save({"generator": {"model." + k: v for k, v in state.items()}}, path)
    with pytest.raises(CheckpointError) as info:
        load_generator_checkpoint(target, path)
    message = str(info.value)
    assert "2 unexpected keys" in message
    assert "'blocks.0.self_attn.q_extra.weight'" in message
    assert "'blocks.5.self_attn.q.weight'" in message
    assert "missing" not in message


def test_wrong_shape(tmp_path: Path, source: WanTransformer3DModel, target) -> None:
    state = original_state_dict(source)
    state["blocks.0.self_attn.q.weight"] = torch.zeros(24, 12)
    path = tmp_path / "shape.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as info:
        load_generator_checkpoint(target, path)
    message = str(info.value)
    assert "1 shape mismatch" in message
    assert "'blocks.0.attn1.to_q.weight'" in message
    assert "'blocks.0.self_attn.q.weight'" in message
    assert "(24, 12)" in message and "(24, 24)" in message


def test_many_problems_are_counted_and_listed_briefly(source: WanTransformer3DModel) -> None:
    state = {k: v for k, v in original_state_dict(source).items() if not k.startswith("blocks.")}
    with pytest.raises(CheckpointError) as info:
        convert_original_state_dict(state, reference_of(source))
    message = str(info.value)
    n_block_keys = sum(k.startswith("blocks.") for k in source.state_dict())
    assert f"{n_block_keys} missing keys" in message
    assert f"and {n_block_keys - 5} more" in message


def test_convert_original_state_dict_returns_diffusers_names(source: WanTransformer3DModel) -> None:
    converted = convert_original_state_dict(original_state_dict(source), reference_of(source))
    assert converted.keys() == source.state_dict().keys()


# ---------------------------------------------------------------------------------------------
# File errors
# ---------------------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(CheckpointError, match="no such checkpoint file") as info:
        read_generator(path)
    assert str(path) in str(info.value)


def test_directory_passed_to_read_generator(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a directory") as info:
        read_generator(tmp_path)
    assert "load_diffusers_transformer" in str(info.value)


@pytest.mark.parametrize("name", ["corrupt.pt", "corrupt.safetensors"])
def test_corrupt_file(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_bytes(os.urandom(4096))
    with pytest.raises(CheckpointError, match="cannot read") as info:
        read_generator(path)
    assert str(path) in str(info.value)
    assert info.value.__cause__ is not None


def test_non_tensor_pickle_is_refused_not_executed(tmp_path: Path) -> None:
    path = tmp_path / "opaque.pt"
    torch.save({"generator": {"model.head.modulation": Opaque()}}, path)
    # The file is a valid pickle: only a weights-only load refuses it.
    assert isinstance(torch.load(path, weights_only=False)["generator"]["model.head.modulation"], Opaque)
    with pytest.raises(CheckpointError, match=r"weights_only=True") as info:
        read_generator(path)
    assert "Opaque" in str(info.value)
    assert str(path) in str(info.value)


def test_plain_non_tensor_values_rejected(tmp_path: Path) -> None:
    path = tmp_path / "ints.pt"
    torch.save({"generator": {"model.head.modulation": 3}}, path)
    with pytest.raises(
        CheckpointError, match=r"not a dict of named tensors.*'model\.head\.modulation' \(int\)"
    ):
        read_generator(path)


def test_not_a_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(CheckpointError, match="holds a list, not a dict of tensors"):
        read_generator(path)


def test_unsupported_extension(tmp_path: Path) -> None:
    path = tmp_path / "weights.npz"
    path.write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"unsupported checkpoint file type '\.npz'"):
        read_generator(path)


# ---------------------------------------------------------------------------------------------
# Diffusers folders
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipeline_folder(tmp_path_factory: pytest.TempPathFactory, source: WanTransformer3DModel) -> Path:
    folder = tmp_path_factory.mktemp("pipeline")
    source.save_pretrained(folder / "transformer")
    return folder


@pytest.mark.parametrize("sub", ["transformer", "."])
def test_load_diffusers_transformer(pipeline_folder: Path, source: WanTransformer3DModel, sub: str) -> None:
    folder = pipeline_folder if sub == "." else pipeline_folder / sub
    model = load_diffusers_transformer(folder)
    assert isinstance(model, WanTransformer3DModel)
    assert not model.training
    assert_same_parameters(model, source)
    assert torch.equal(forward(model), forward(source))


def test_load_diffusers_transformer_dtype_keeps_fp32_modules(pipeline_folder: Path, source) -> None:
    model = load_diffusers_transformer(pipeline_folder, torch_dtype=torch.bfloat16)
    assert model.blocks[0].attn1.to_q.weight.dtype == torch.bfloat16
    assert model.proj_out.weight.dtype == torch.bfloat16
    assert model.blocks[0].norm2.weight.dtype == torch.float32
    assert model.scale_shift_table.dtype == torch.float32
    assert model.condition_embedder.time_embedder.linear_1.weight.dtype == torch.float32
    assert model.rope.freqs_cos.dtype == torch.float32
    assert torch.equal(model.rope.freqs_cos, source.rope.freqs_cos)
    assert torch.equal(model.blocks[0].norm2.weight, source.blocks[0].norm2.weight)


def test_load_diffusers_sharded_folder(tmp_path: Path, source: WanTransformer3DModel) -> None:
    source.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert_same_parameters(load_diffusers_transformer(tmp_path), source)


def test_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "transformer").mkdir()
    with pytest.raises(CheckpointError, match=r"no config\.json") as info:
        load_diffusers_transformer(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such diffusers folder"):
        load_diffusers_transformer(tmp_path / "absent")


def test_folder_with_other_class(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKLWan"}))
    with pytest.raises(CheckpointError, match="describes a AutoencoderKLWan, not a WanTransformer3DModel"):
        load_diffusers_transformer(tmp_path)


def test_folder_without_weights(tmp_path: Path, source: WanTransformer3DModel) -> None:
    source.save_config(tmp_path)
    with pytest.raises(CheckpointError, match="has no weights"):
        load_diffusers_transformer(tmp_path)


def test_folder_with_mismatched_weights(tmp_path: Path, source: WanTransformer3DModel) -> None:
    source.save_config(tmp_path)
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    state["proj_out.weight"] = torch.zeros(8, 24)
    del state["patch_embedding.bias"]
    save_file(state, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    with pytest.raises(CheckpointError) as info:
        load_diffusers_transformer(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "'patch_embedding.bias'" in message
    assert "'proj_out.weight': checkpoint (8, 24) vs model (16, 24)" in message
