"""Bad input through the real command line, as a user meets it: one line that names the problem.

Each case runs `worldsim` (or `python play.py`) as a subprocess and checks the exit status, that the
error is a single line naming what is wrong, and that no traceback escapes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_world
from worldsim.bundle import BUNDLE_FILE, load
from worldsim.cli import main
from worldsim.replay import ReplayWriter
from worldsim.world import World

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "SDL_VIDEODRIVER": "dummy"}


def run(*args: str, script: str = "worldsim") -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "worldsim.cli"] if script == "worldsim" else [sys.executable, script]
    return subprocess.run(
        [*command, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300, check=False
    )


def fails(result: subprocess.CompletedProcess[str], *words: str, status: int = 2) -> str:
    """The error line of a run that failed as a user should see it."""
    lines = [line for line in result.stderr.splitlines() if line.strip() and "%|" not in line]
    if lines and lines[0].startswith("usage:"):  # argparse shows the usage above its own one-line error
        lines = [line for line in lines if ": error: " in line]
    assert result.returncode == status, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def bundle(tiny_bundle: str) -> Path:
    return Path(tiny_bundle)


def copy_bundle(bundle: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(bundle, tmp_path / "bundle"))


# ---------------------------------------------------------------------------------------------
# Files and paths
# ---------------------------------------------------------------------------------------------


def test_an_unwritable_output_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    for out in ("/proc/worldsim.mp4", str(tmp_path / "a-file.txt" / "v.mp4")):
        (tmp_path / "a-file.txt").write_text("x")
        result = run("generate", "--prompt", "a", "--out", out, "--model", str(tmp_path / "missing-model"))
        fails(result, "--out")  # refused for the output, though the model does not even exist
    fails(run("generate", "--prompt", "a", "--out", str(tmp_path)), "must end in .mp4 or .gif")


def test_bad_numbers_and_devices() -> None:
    for seconds in ("nan", "inf"):
        fails(run("generate", "--prompt", "a", "--seconds", seconds, "--out", "/tmp/x.mp4"), "--seconds")
    fails(run("bench", "--random", "tiny", "--device", "mps"), "runs on cpu or cuda, not 'mps'")
    fails(run("bench", "--random", "tiny", "--device", "meta"), "not 'meta'")
    fails(run("bench", "--random", "tiny", "--device", "gpu"), "not 'gpu'")
    fails(run("bench", "--random", "tiny", "--device", "cuda:x"), "unknown device 'cuda:x'")
    fails(run("bench", "--random", "tiny", "--threads", "0"), "--threads")


def test_help_and_argument_errors_import_no_torch() -> None:
    code = (
        "import sys\n"
        "from worldsim.cli import main\n"
        "for argv in (['--help'], ['generate', '--help'], ['train', '--help'], ['eval', '--help'],\n"
        "             ['play', '--help'], ['serve', '--help'], ['soak', '--help'], ['inspect', '--help'],\n"
        "             ['generate', '--seconds']):\n"
        "    try:\n"
        "        main(argv)\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------------
# Bundles
# ---------------------------------------------------------------------------------------------


def test_garbled_weights_are_refused_naming_the_tensor(bundle: Path, tmp_path: Path) -> None:
    copy = copy_bundle(bundle, tmp_path)
    weights = copy / "transformer" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(weights)
    name = sorted(tensors)[3]
    raw = bytearray(weights.read_bytes())
    header = 8 + int.from_bytes(raw[:8], "little")
    offsets = json.loads(raw[8:header])[name]["data_offsets"]
    raw[header + offsets[0] : header + offsets[0] + 8] = b"\xff" * 8  # two float32 NaNs inside the data
    weights.write_bytes(bytes(raw))
    line = fails(
        run("generate", "--model", str(copy), "--prompt", "a", "--out", str(tmp_path / "v.mp4")), name
    )
    assert "NaN or Inf" in line and "corrupt" in line
    assert not (tmp_path / "v.mp4").exists()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda spec: spec.update(transformer=5), ("'transformer' must be a folder name", "5")),
        (lambda spec: spec.update(height="sixty-four"), ("'height' must be a positive whole number",)),
        (lambda spec: spec["engine"].update(shift="fast"), ("engine setting 'shift' must be a number",)),
        (lambda spec: spec["engine"].update(window_frames=None), ("'window_frames' must be a whole number",)),
        (lambda spec: spec.update(engine="x"), ("'engine' must be an object",)),
    ],
    ids=["transformer-number", "height-text", "engine-string", "engine-null", "engine-not-object"],
)
def test_a_bad_bundle_file_names_the_file_and_the_field(bundle: Path, tmp_path: Path, change, words) -> None:
    copy = copy_bundle(bundle, tmp_path)
    spec = json.loads((copy / BUNDLE_FILE).read_text())
    change(spec)
    (copy / BUNDLE_FILE).write_text(json.dumps(spec))
    import worldsim

    with pytest.raises(worldsim.BundleError) as info:
        worldsim.load(copy)
    assert str(copy / BUNDLE_FILE) in str(info.value)
    for word in words:
        assert word in str(info.value)


def test_a_bad_bundle_file_through_the_command_line(bundle: Path, tmp_path: Path) -> None:
    copy = copy_bundle(bundle, tmp_path)
    spec = json.loads((copy / BUNDLE_FILE).read_text())
    spec["height"] = "sixty-four"
    (copy / BUNDLE_FILE).write_text(json.dumps(spec))
    fails(run("bench", "--model", str(copy), "--blocks", "2"), BUNDLE_FILE, "'height'")


# ---------------------------------------------------------------------------------------------
# Replays
# ---------------------------------------------------------------------------------------------


def record(path: Path, world: World | None = None, blocks: int = 3) -> Path:
    world = world or tiny_world()
    session = world.session("a meadow", seed=3)
    with_header = ReplayWriter(path, world, session)
    for index in range(blocks):
        if index == 1:
            session.set_prompt("a desert")
        with_header.write(session.step(), "noop")
    with_header.close()
    return path


def edit_header(path: Path, **changes: object) -> Path:
    lines = path.read_text().splitlines()
    lines[0] = json.dumps({**json.loads(lines[0]), **changes})
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"seed": "seven"}, ("'seed' must be a whole number", "'seven'")),
        ({"engine": "x"}, ("'engine' must be an object",)),
        ({"engine": {"block_frames": "3"}}, ("'engine'", "'block_frames' must be a whole number")),
        ({"start_prompt": None}, ("'start_prompt' must be a string",)),
    ],
    ids=["seed-text", "engine-text", "engine-value-text", "prompt-null"],
)
def test_a_replay_header_of_the_wrong_types_is_refused(tmp_path: Path, changes, words) -> None:
    path = edit_header(record(tmp_path / "run.jsonl"), **changes)
    fails(run("replay", str(path), "--out", str(tmp_path / "v.mp4")), str(path), *words)


def test_a_binary_or_header_only_replay_is_refused(tmp_path: Path) -> None:
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(bytes(range(256)) * 4)
    fails(run("replay", str(binary), "--out", str(tmp_path / "v.mp4")), "not a text (UTF-8) file")
    header_only = record(tmp_path / "run.jsonl")
    header_only.write_text(header_only.read_text().splitlines()[0] + "\n")
    fails(run("replay", str(header_only), "--out", str(tmp_path / "v.mp4")), "holds no blocks")
    assert not (tmp_path / "v.mp4").exists()


def test_a_replay_edited_to_another_seed_fails_verification(tiny_bundle: str, tmp_path: Path, capsys) -> None:
    path = record(tmp_path / "run.jsonl", load(tiny_bundle))
    assert main(["replay", str(path), "--out", str(tmp_path / "same.mp4")]) == 0
    assert "each block matched its recorded hash" in capsys.readouterr().out
    edited = edit_header(path, seed=json.loads(path.read_text().splitlines()[0])["seed"] + 1)
    line = fails(run("replay", str(edited), "--out", str(tmp_path / "v.mp4")), "block 0 differs", status=1)
    assert "expected frames" in line and "got" in line
    assert main(["replay", str(edited), "--out", str(tmp_path / "v.mp4"), "--no-verify"]) == 0
    assert "not checked" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# The window
# ---------------------------------------------------------------------------------------------


def test_play_refuses_an_unwritable_recording_before_the_window_opens(tmp_path: Path) -> None:
    line = fails(run("--record", "/proc/worldsim-run.jsonl", "--frames", "1", script="play.py"), "--record")
    assert "cannot write" in line


def test_threads_are_set_for_the_environment_and_refused_when_wrong(tiny_bundle: str) -> None:
    from envs.world_env import WorldEnv

    before = torch.get_num_threads()
    try:
        WorldEnv(model=tiny_bundle, threads=1)
        assert torch.get_num_threads() == 1
        for bad in ("two", 0, True):
            with pytest.raises(ValueError, match="threads"):
                WorldEnv(model=tiny_bundle, threads=bad)
    finally:
        torch.set_num_threads(before)
