"""evaluate --perturb and predict --perturb (issue 35): every video degraded by one robustness perturbation at one
level, with the small trained detector on its own 12 generated clips (64x64, 8 frames: h264 re-encodes are quick)."""

import csv
import json

import pytest

from support import run_cli
from dfdtrain.cli import main
from dfdtrain.commands._common import PERTURBATION_TYPES
from dfdtrain.core.errors import DfdError
from dfdtrain.data.perturb import LEVEL_PARAMETERS, TYPES
from dfdtrain.evaluation.evaluate import resolve_checkpoint, run_evaluation

OPTIONS = {"batch_size": 4, "workers": 0, "bootstrap": 0}


def scores(out_dir):
    with open(out_dir / "predictions.csv", newline="") as handle:
        return {row["key"]: (row["score"], row["step_scores"]) for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def setup(trained_run, tmp_path_factory):
    """(checkpoint, shards pattern, output root, the clean evaluation's metrics)."""
    root = tmp_path_factory.mktemp("perturb_eval")
    checkpoint = resolve_checkpoint(trained_run, "last")
    shards = f"{trained_run.parent / 'shards'}/*.tar"
    return checkpoint, shards, root, run_evaluation(checkpoint, shards, root / "clean", **OPTIONS)


def test_level_0_gives_exactly_the_clean_numbers(setup):
    checkpoint, shards, root, clean = setup
    assert "perturbation" not in clean and "perturbation" not in (root / "clean" / "report.md").read_text()
    metrics = run_evaluation(checkpoint, shards, root / "blur0", perturb="blur:0", **OPTIONS)
    assert metrics["perturbation"] == {"spec": "blur:0", "type": "blur", "level": 0,
                                       "parameter": LEVEL_PARAMETERS["blur"][0], "value": None}
    for name in ("video", "frame", "loss", "videos", "frames"):
        assert metrics[name] == clean[name], name
    assert scores(root / "blur0") == scores(root / "clean")


@pytest.mark.parametrize("spec", ["block:5", "h264:5"])
def test_a_strong_perturbation_changes_the_scores_and_is_recorded(setup, spec):
    """block: the decoded frames; h264: the source bytes re-encoded before decoding. Every video still counts."""
    checkpoint, shards, root, clean = setup
    name, level = spec.split(":")
    out_dir = root / name
    metrics = run_evaluation(checkpoint, shards, out_dir, perturb=spec, **OPTIONS)
    value = LEVEL_PARAMETERS[name][1][4]
    assert metrics["perturbation"] == {"spec": spec, "type": name, "level": 5,
                                       "parameter": LEVEL_PARAMETERS[name][0], "value": value}
    assert json.loads((out_dir / "metrics.json").read_text())["perturbation"] == metrics["perturbation"]
    assert f"- perturbation: {spec} on every video ({LEVEL_PARAMETERS[name][0]} = {value:g})" in \
        (out_dir / "report.md").read_text()
    accounting = metrics["accounting"]
    assert accounting["scored"] == accounting["promised"] == clean["videos"] == 12 and metrics["skipped"]["count"] == 0
    perturbed, plain = scores(out_dir), scores(root / "clean")
    assert perturbed.keys() == plain.keys()
    changed = [key for key in plain if perturbed[key] != plain[key]]
    assert len(changed) >= len(plain) // 2, changed
    assert metrics["loss"] != clean["loss"]


@pytest.mark.parametrize("spec, message", [("blurr:3", "unknown perturbation 'blurr'"),
                                           ("jpeg:9", "perturbation level 9 is not an integer in 0..5"),
                                           ("jpeg", "needs a level 0..5")])
def test_a_bad_spec_is_one_line_before_anything_is_read(tmp_path, spec, message):
    with pytest.raises(DfdError) as caught:  # neither the checkpoint nor the shards exist: never reached
        run_evaluation(tmp_path / "no-checkpoint", str(tmp_path / "none-*.tar"), tmp_path / "out", perturb=spec)
    assert message in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_help_lists_every_type():
    assert PERTURBATION_TYPES == TYPES


def test_cli_evaluate_and_predict_say_which_perturbation(trained_run, setup, tmp_path, capsys):
    checkpoint, shards, root, clean = setup
    result = run_cli("evaluate", "--run", trained_run, "--checkpoint", "last", "--shards", shards, "--out",
                     tmp_path / "eval", "--workers", "0", "--batch-size", "4", "--bootstrap", "0",
                     "--perturb", "jpeg:3")
    assert result.returncode == 0, result.stderr[-2000:]
    jpeg = LEVEL_PARAMETERS["jpeg"]
    assert f"perturbation: jpeg:3 on every video ({jpeg[0]} = {jpeg[1][2]})" in result.stdout.splitlines()
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["perturbation"]["spec"] == "jpeg:3"

    capsys.readouterr()
    assert main(["evaluate", "--run", str(trained_run), "--shards", shards, "--out", str(tmp_path / "bad"),
                 "--perturb", "blurr:3"]) != 0  # in this process: the line comes before any process group
    bad = capsys.readouterr()
    assert len(bad.err.strip().splitlines()) == 1 and "unknown perturbation 'blurr'" in bad.err, bad.err
    assert not bad.out and not (tmp_path / "bad").exists()

    video = sorted((trained_run.parent / "data").rglob("*.mp4"))[0]
    result = run_cli("predict", "--checkpoint", trained_run, "--faces", "none", "--quiet", "--perturb", "blur:5", video)
    assert result.returncode == 0, result.stderr[-2000:]
    blur = LEVEL_PARAMETERS["blur"]
    assert f"  perturbation: blur:5 on every video ({blur[0]} = {blur[1][4]})" in result.stdout.splitlines()


def test_predict_perturbs_the_file_bytes_and_frames(trained_run):
    from dfdtrain.inference.predict import Predictor

    video = sorted((trained_run.parent / "data").rglob("*.mp4"))[0]
    [plain] = Predictor(trained_run, faces="none", progress=False).predict([video])
    assert "perturbation" not in plain
    for spec in ("h264:5", "noise:5"):
        [entry] = Predictor(trained_run, faces="none", progress=False, perturb=spec).predict([video])
        assert entry["perturbation"]["spec"] == spec and "error" not in entry
        assert entry["step_scores_raw"] != plain["step_scores_raw"], spec
    [same] = Predictor(trained_run, faces="none", progress=False, perturb="h264:0").predict([video])
    assert same["step_scores_raw"] == plain["step_scores_raw"] and same["perturbation"]["value"] is None
    with pytest.raises(DfdError, match="unknown perturbation 'h265'"):
        Predictor(trained_run / "nothing-here", perturb="h265:1")  # the spec before the checkpoint
