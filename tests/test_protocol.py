"""dfdtrain protocol: one checkpoint on every test set of a suite, for real (trained detector, real shards)."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, run_cli
from test_evaluate import assert_valid_png

SETS = ("Synth val", "FF++ 183-253")


@pytest.fixture(scope="module")
def suite(trained_run, ffpp_shards, tmp_path_factory):
    """A suite with two test sets from different indexes: the trained detector's generated val shards and real
    FF++ shards (one source pair: reals and each method's fakes)."""
    path = tmp_path_factory.mktemp("suite") / "suite.yaml"
    path.write_text(yaml.safe_dump({
        "name": "smoke suite", "description": "generated clips and real FF++ c40: a smoke test, not a result",
        "root": str(trained_run.parent),
        "test_sets": {SETS[0]: "shards/val-*.tar",
                      SETS[1]: {"shards": f"{ffpp_shards}/*.tar", "note": "one source pair"}}}, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def one_rank(trained_run, suite, tmp_path_factory):
    out = tmp_path_factory.mktemp("protocol") / "one"
    result = run_cli("protocol", "--checkpoint", trained_run, "--suite", suite, "--out", out, "--workers", "0",
                     "--bootstrap", "300")
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_protocol_writes_one_table_for_test_sets_of_two_indexes(one_rank, trained_run):
    out, result = one_rank
    table = json.loads((out / "table.json").read_text())
    assert list(table["test_sets"]) == list(SETS) and table["suite"] == "smoke suite"
    assert table["checkpoint"] == str(trained_run / "checkpoints" / "best")
    assert table["calibration"].startswith("temperature ")
    assert "fitted on validation after epoch 1" in table["calibration"]
    synth, ffpp = (table["test_sets"][name] for name in SETS)
    assert (synth["videos"], synth["real"] + synth["fake"]) == (4, 4)
    assert (ffpp["videos"], ffpp["real"], ffpp["fake"]) == (10, 2, 8) and ffpp["groups"] == 1
    for entry in (synth, ffpp):
        assert entry["not_scored"] == 0 and entry["frames"] >= entry["videos"]
        for level in ("video", "frame"):
            for name in ("auc", "ap", "eer", "log_loss", "ece", "accuracy"):
                value, interval = entry[level][name], entry[level][f"{name}_ci"]
                assert interval[0] - 1e-12 <= value <= interval[1] + 1e-12, (level, name, value, interval)
        assert entry["video"]["log_loss_raw"] is not None and entry["video"]["ece_raw"] is not None
        metrics = json.loads((out / entry["evaluation"] / "metrics.json").read_text())
        assert metrics["video"]["head"]["auc"] == entry["video"]["auc"]
        assert metrics["frame"]["auc"] == entry["frame"]["auc"]
    # one source pair is one group: every resample is the whole set, the interval a point
    assert ffpp["video"]["accuracy_ci"] == pytest.approx([ffpp["video"]["accuracy"]] * 2, abs=1e-12)
    assert set(ffpp["methods"]) == {"Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"}
    assert all(values["real"] == 2 and values["fake"] == 2 for values in ffpp["methods"].values())
    assert synth["methods"] == {}

    markdown = (out / "table.md").read_text()
    for name in SETS:
        assert markdown.count(f"[{name}](sets/") == 2  # a row in the video and the frame table
    assert "| FF++ 183-253 | NeuralTextures | 2 | 2 |" in markdown and "one source pair" in markdown
    assert_valid_png(out / "protocol.png")
    assert f"[1/2] {SETS[0]}: 4 videos, video AUC" in result.stdout


def test_protocol_on_two_ranks_equals_one_rank(one_rank, trained_run, suite, tmp_path):
    out = tmp_path / "two"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29673", "-m", "dfdtrain",
         "protocol", "--checkpoint", str(trained_run), "--suite", str(suite), "--out", str(out), "--only", SETS[0],
         "--workers", "0", "--bootstrap", "300"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    two = json.loads((out / "table.json").read_text())["test_sets"]
    one = json.loads((one_rank[0] / "table.json").read_text())["test_sets"]
    assert list(two) == [SETS[0]]
    for level in ("video", "frame"):  # the same records, sorted and resampled alike: the same numbers
        assert json.dumps(two[SETS[0]][level]) == json.dumps(one[SETS[0]][level])


def test_suite_problems_are_one_line(trained_run, suite, tmp_path, capsys):
    from dfdtrain.cli import main

    def refused(*args):  # in this process: every one is refused before a process group or a model exists
        status = main(["protocol", "--checkpoint", str(trained_run), "--out", str(tmp_path / "out"), *map(str, args)])
        stderr = capsys.readouterr().err
        assert status == 2, stderr[-2000:]
        lines = stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("dfdtrain protocol: error: ")
        return lines[0]

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ntest_set: {a: b}\n")
    assert "unknown suite key 'test_set'" in refused("--suite", bad)
    assert "no test set 'DFDC'" in refused("--suite", suite, "--only", "DFDC")
    assert "nope.yaml" in refused("--suite", tmp_path / "nope.yaml")
    line = refused("--suite", suite, "--root", tmp_path)
    assert f"test set '{SETS[0]}'" in line and "shards/val-*.tar" in line and "--only" in line
    assert not (tmp_path / "out").exists()


def test_shipped_suites_load():
    from dfdtrain.protocol import load_suite

    suites = sorted((REPO / "configs" / "protocols").glob("*.yaml"))
    assert len(suites) >= 3
    for path in suites:
        suite = load_suite(path, root="/data/shards")
        assert suite.test_sets and all(pattern.startswith("/data/shards/") for test_set in suite.test_sets.values()
                                       for pattern in test_set.shards)
    cross = load_suite(REPO / "configs" / "protocols" / "ffpp_c23_cross.yaml")
    assert {"Celeb-DF v2", "DFDC", "DFDC-Preview", "DFD"} <= set(cross.test_sets)
