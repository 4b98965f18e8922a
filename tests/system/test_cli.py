"""The command line as a user meets it: --help everywhere, one-line errors, and the README main job."""

import json

import pytest

from support import run_cli
from dfdtrain.cli import COMMANDS


def test_top_level_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in COMMANDS:
        assert command in result.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command):
    result = run_cli(command, "--help")
    assert result.returncode == 0 and "usage: dfdtrain " + command in result.stdout


def test_unknown_command_is_one_line():
    result = run_cli("frobnicate")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "frobnicate" in result.stderr


def test_an_error_naming_a_file_with_a_newline_stays_one_line(tmp_path):
    result = run_cli("predict", "--checkpoint", tmp_path / "no\nsuch", tmp_path / "clip.mp4")
    assert result.returncode == 2 and result.stderr.splitlines() == [
        f"dfdtrain predict: error: {tmp_path}/no\\nsuch: checkpoint not found"], result.stderr


def test_demo_data_stage_runs_synth_index_shard_and_resumes(tmp_path):
    out = tmp_path / "demo"
    result = run_cli("demo", "--out", out, "--count", "16", "--frames", "8", "--size", "64x64", "--json", "--quiet",
                     "--no-train")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report == json.loads((out / "report.json").read_text())
    assert report["videos"] == 16 and report["groups"] == 8 and report["skipped"] == 0
    assert sum(split["samples"] for split in report["splits"].values()) == 16
    assert set(report["splits"]) == {"train", "val", "test"}
    shards = sorted(path.name for path in (out / "shards").glob("*.tar"))
    assert shards and all(name.split("-")[0] in ("train", "val", "test") for name in shards)

    # a second run regenerates identical data, so every shard of the first run is kept
    again = run_cli("demo", "--out", out, "--count", "16", "--frames", "8", "--size", "64x64", "--json", "--quiet",
                    "--no-train")
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout[again.stdout.index("{"):])["resumed_shards"] == len(shards)
