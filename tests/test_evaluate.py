"""dfdtrain evaluate, end to end with real components: a trained detector, real shards, real plots."""

import csv
import json
import re

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from dfdtrain.evaluation import RULES, resolve_checkpoint, run_evaluation
from dfdtrain.metrics import roc_auc

BASE_PLOTS = ("roc.png", "pr.png", "calibration.png", "confusion.png", "histogram.png")


@pytest.fixture(scope="module")
def ffpp_shards(tmp_path_factory, fixtures):
    """Real FF++ shards with a ``method`` field: the YouTube pair 183/253, its 2 reals and its fakes by each of
    the 4 manipulation methods (a whole leakage group, and few videos: decoding full-size clips is slow)."""
    from dfdtrain.data.datasets import IndexOptions
    from dfdtrain.data.index import build_manifest
    from dfdtrain.data.shard import write_shards

    root = tmp_path_factory.mktemp("ffpp_eval")
    rows, _ = build_manifest("ffpp", fixtures / "ffpp", IndexOptions(ffpp_splits=str(fixtures / "labels/ffpp")),
                             progress=False)
    rows = [row for row in rows if row["group"] == "ffpp:183-253"]
    write_shards(rows, root / "shards", target_bytes=2_000_000, progress=False)
    return root / "shards"


def read_predictions(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def assert_valid_png(path):
    assert path.is_file(), path
    assert 5_000 < path.stat().st_size < 2_000_000, (path, path.stat().st_size)
    with Image.open(path) as image:
        assert image.format == "PNG"
        image.verify()
    with Image.open(path) as image:
        width, height = image.size
        assert 300 <= width <= 2000 and 300 <= height <= 2000, (path, image.size)


def assert_report_links(out_dir, plots):
    report = (out_dir / "report.md").read_text()
    for plot in plots:
        assert re.search(rf"!\[[^\]]+\]\({re.escape(plot)}\)", report), plot
    assert "```" in report and "video/head" in report


def test_evaluate_cli_writes_every_file(trained_run, tmp_path):
    shards = trained_run.parent / "shards"
    out_dir = tmp_path / "eval"
    result = run_cli("evaluate", "--run", trained_run, "--checkpoint", "last", "--shards", f"{shards}/*.tar",
                     "--out", out_dir, "--workers", "0", "--batch-size", "4", "--json")
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)

    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert printed == metrics
    assert metrics["checkpoint"] == str(trained_run / "checkpoints" / "last")
    assert set(metrics["video"]) == {"head", *RULES}
    for level in (*metrics["video"].values(), metrics["frame"]):
        assert {"auc", "ap", "eer", "accuracy", "confusion"} <= set(level)
    assert metrics["videos"] == metrics["labels"]["real"] + metrics["labels"]["fake"] == 12
    assert metrics["labels"]["real"] and metrics["labels"]["fake"]
    assert metrics["frames"] >= metrics["videos"]
    assert metrics["loss"] > 0 and metrics["skipped"]["count"] == 0

    rows = read_predictions(out_dir / "predictions.csv")
    assert len(rows) == metrics["videos"] and len({row["key"] for row in rows}) == len(rows)
    labels = np.array([int(row["label"]) for row in rows])
    assert roc_auc(labels, np.array([float(row["score_mean"]) for row in rows])) == metrics["video"]["mean"]["auc"]
    assert roc_auc(labels, np.array([float(row["score"]) for row in rows])) == metrics["video"]["head"]["auc"]
    assert sum(len(row["frame_scores"].split()) for row in rows) == metrics["frames"]

    for plot in BASE_PLOTS:
        assert_valid_png(out_dir / plot)
    assert not (out_dir / "breakdown.png").exists() and "breakdown" not in metrics  # one dataset, no methods
    assert_report_links(out_dir, BASE_PLOTS)


def test_evaluate_ffpp_breaks_down_by_method(trained_run, ffpp_shards, tmp_path):
    out_dir = tmp_path / "eval"
    metrics = run_evaluation(resolve_checkpoint(trained_run, "best"), f"{ffpp_shards}/*.tar", out_dir,
                             batch_size=4, workers=0)
    rows = read_predictions(out_dir / "predictions.csv")
    assert len(rows) == metrics["videos"] == 10
    assert {row["method"] for row in rows if row["label"] == "1"} >= {"Deepfakes", "Face2Face", "FaceSwap",
                                                                       "NeuralTextures"}
    by_method = metrics["breakdown"]["method"]
    reals = metrics["labels"]["real"]
    for method in ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"):
        assert by_method[method]["real"] == reals and by_method[method]["fake"] >= 1
        assert 0.0 <= by_method[method]["auc"] <= 1.0
    assert metrics["breakdown"]["dataset"]["ffpp"]["auc"] == pytest.approx(metrics["video"]["head"]["auc"])
    assert json.loads((out_dir / "metrics.json").read_text())["breakdown"] == metrics["breakdown"]
    plots = (*BASE_PLOTS, "breakdown.png")
    for plot in plots:
        assert_valid_png(out_dir / plot)
    assert_report_links(out_dir, plots)


def test_evaluate_bad_run_is_one_line_error(tmp_path):
    result = run_cli("evaluate", "--run", tmp_path / "no-such-run", "--shards", f"{tmp_path}/*.tar",
                     "--out", tmp_path / "out")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "no-such-run" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_two_rank_evaluate_scores_every_video_once_like_one_process(trained_run, tmp_path):
    import os
    import subprocess
    import sys

    shards = str(trained_run.parent / "shards" / "val-*.tar")
    single = run_cli("evaluate", "--run", trained_run, "--shards", shards, "--out", tmp_path / "one", "--json")
    assert single.returncode == 0, single.stderr[-2000:]
    # under torchrun, --run-dir (torchrun itself would take --run as its --run-path)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29671", "-m", "dfdtrain",
         "evaluate", "--run-dir", str(trained_run), "--shards", shards, "--out", str(tmp_path / "two"), "--workers",
         "1"], capture_output=True, text=True, timeout=600, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {name: list(csv.DictReader(open(tmp_path / name / "predictions.csv"))) for name in ("one", "two")}
    assert sorted(row["key"] for row in rows["two"]) == sorted(row["key"] for row in rows["one"])
    scores = {row["key"]: float(row["score"]) for row in rows["one"]}
    assert all(float(row["score"]) == pytest.approx(scores[row["key"]], abs=1e-6) for row in rows["two"])
