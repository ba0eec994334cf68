"""Each command end to end for a few blocks, and its errors."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import HEIGHT, LATENTS_MEAN, LATENTS_STD, WIDTH, tiny_transformer, tiny_vae
from worldsim.bundle import save_bundle
from worldsim.cli import main
from worldsim.config import EngineConfig
from worldsim.video import read_video


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> str:
    folder = tmp_path_factory.mktemp("bundle")
    save_bundle(
        folder,
        tiny_transformer(),
        tiny_vae(),
        {"kind": "hash", "dim": 16, "length": 5},
        EngineConfig(fps=16.0),
        HEIGHT,
        WIDTH,
        name="test",
        latents_mean=LATENTS_MEAN,
        latents_std=LATENTS_STD,
    )
    return str(folder)


def test_generate_from_a_prompt(bundle, tmp_path, capsys) -> None:
    out = tmp_path / "video.mp4"
    assert (
        main(["generate", "--model", bundle, "--prompt", "a meadow", "--seconds", "2", "--out", str(out)])
        == 0
    )
    frames = read_video(out)
    assert frames.shape == (32, HEIGHT, WIDTH, 3)  # 2 s at 16 fps: 3 blocks (9 + 12 + 12), the last cut short
    assert "wrote 32 frames (2.00 s at 16 fps)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("source", "frames"),
    [
        (["--prompt", "a meadow", "--seconds", "1"], 16),
        (["--script", "a meadow [3s] | a meadow at night [3s] | a city [3s#]"], 144),
        (["--script", "a meadow [1s] | a city", "--seconds", "2.5"], 40),
    ],
    ids=["one-second", "three-shots-of-3s", "open-end"],
)
def test_generate_makes_the_seconds_asked_for(bundle, tmp_path, source, frames) -> None:
    out = tmp_path / "video.mp4"
    assert main(["generate", "--model", bundle, *source, "--out", str(out)]) == 0
    assert read_video(out).shape[0] == frames


def test_generate_from_a_script(bundle, tmp_path) -> None:
    out = tmp_path / "video.gif"
    assert (
        main(["generate", "--model", bundle, "--script", "a meadow [2b] | a city [2b#]", "--out", str(out)])
        == 0
    )
    assert read_video(out).shape == (9 + 3 * 12, HEIGHT, WIDTH, 3)


def test_how_a_prompt_change_is_taken_in_is_an_option(bundle, tmp_path, capsys) -> None:
    """--on-prompt-change flush / keep / recache: three answers to the same script, three videos."""
    videos = {}
    for answer in ("flush", "keep", "recache"):
        out = tmp_path / f"{answer}.mp4"
        script = ["--script", "a meadow [3b] | a city [2b]"]
        assert (
            main(["generate", "--model", bundle, *script, "--on-prompt-change", answer, "--out", str(out)])
            == 0
        )
        videos[answer] = read_video(out)
    before = 9 + 2 * 12  # the first shot's frames are the same in every video
    assert all((v[:before] == videos["flush"][:before]).all() for v in videos.values())
    # this bundle's flush keeps the sink and 2 frames of a window of 3 held frames: it trims nothing
    assert (videos["flush"] == videos["keep"]).all()
    assert not (videos["recache"][before:] == videos["keep"][before:]).all()
    with pytest.raises(SystemExit):
        main(["generate", "--model", bundle, *script, "--on-prompt-change", "forget", "--out", "x.mp4"])
    assert "invalid choice: 'forget'" in capsys.readouterr().err


def test_generate_errors(bundle, tmp_path, capsys) -> None:
    out = str(tmp_path / "v.mp4")
    assert main(["generate", "--model", bundle, "--script", "a [2s] | b [x]", "--out", out]) == 2
    err = capsys.readouterr().err
    assert "bad --script" in err and "^" in err
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "a", "--out", out]) == 2
    assert "no bundle named" in capsys.readouterr().err
    assert main(["generate", "--model", bundle, "--prompt", "a", "--out", str(tmp_path / "v.avi")]) == 2
    assert "--out must end in .mp4 or .gif" in capsys.readouterr().err
    for seconds in ("nan", "inf", "-1", "0"):
        assert main(["generate", "--model", bundle, "--prompt", "a", "--seconds", seconds, "--out", out]) == 2
        assert "--seconds must be a positive number" in capsys.readouterr().err
    assert (
        main(["generate", "--model", bundle, "--prompt", "a", "--out", str(tmp_path / "no" / "v.mp4")]) == 2
    )
    assert "does not exist" in capsys.readouterr().err


def test_bench_json(bundle, capsys) -> None:
    assert main(["bench", "--model", bundle, "--blocks", "3", "--json", "--threads", "1"]) == 0
    assert torch.get_num_threads() == 1
    result = json.loads(capsys.readouterr().out)
    for key in ("fps", "block_ms_median", "first_block_ms", "peak_mem_mb", "frames", "device", "dtype"):
        assert key in result
    assert result["frames"] == 9 + 2 * 12 and result["device"] == "cpu" and result["dtype"] == "float32"
    assert result["fps"] > 0 and result["peak_mem_mb"] > 0
    assert result["transformer_ms_median"] + result["decode_ms_median"] <= result["block_ms_median"] + 1e-6


def test_bench_random_preset_and_errors(capsys) -> None:
    assert main(["bench", "--random", "nonesuch"]) == 2
    assert "unknown preset 'nonesuch'" in capsys.readouterr().err
    assert main(["bench", "--random", "tiny", "--blocks", "1"]) == 2
    if not torch.cuda.is_available():
        assert main(["bench", "--random", "tiny", "--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err


def test_soak_reports_counts_checks_and_memory(bundle, tmp_path, capsys) -> None:
    report = tmp_path / "soak.json"
    assert main(["soak", "--model", bundle, "--blocks", "40", "--every", "10", "--json", str(report)]) == 0
    text = capsys.readouterr().out
    assert "verdict: ok" in text and "non-finite latents: none" in text
    result = json.loads(report.read_text())
    assert result["blocks"] == 40 and result["ok"] and not result["positions_out_of_window"]
    assert result["prompt_changes"] > 0 and result["cuts"] > 0
    assert [block for block, _ in result["memory_mb"]] == [1, 11, 21, 31, 40]
    assert main(["soak", "--model", bundle, "--blocks", "0"]) == 2


def test_readme_has_one_set_up_command_and_the_test_command_ci_runs() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()

    def commands(section: str) -> list[str]:
        body = readme.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
        blocks = body.split("```bash\n")[1:]
        return [line for block in blocks for line in block.split("```")[0].splitlines() if line.strip()]

    set_up, test = commands("Set up"), commands("Test")
    assert set_up == [
        "python3 -m venv .venv && . .venv/bin/activate",
        'pip install torch==2.13.0 && pip install -e ".[dev]"',
    ]
    assert len(test) == 1
    ci = (root / ".ci" / "run").read_text().splitlines()
    assert set_up[1] in ci and test[0] in ci


def test_seeds_out_of_range_are_argument_errors(capsys) -> None:
    for seed in ("-1", str(2**63), "seven"):
        with pytest.raises(SystemExit):
            main(["generate", "--prompt", "a", "--seed", seed, "--out", "v.mp4"])
        assert "--seed" in capsys.readouterr().err


def test_a_soak_whose_memory_grows_fails_its_verdict() -> None:
    from worldsim.soak import SoakResult

    flat = SoakResult(
        "m", "cpu", 200, 1, 1, 1.0, memory_mb=[(1, 500.0), (21, 510.0), (101, 512.0), (200, 515.0)]
    )
    assert flat.memory_flat and flat.ok
    growing = SoakResult("m", "cpu", 200, 1, 1, 1.0, memory_mb=[(1, 500.0), (21, 510.0), (200, 560.0)])
    assert growing.memory_growth_mb == 50.0 and not growing.memory_flat and not growing.ok
