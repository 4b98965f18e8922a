"""dfdtrain evaluate, end to end with real components: a trained detector, real shards, real plots."""

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest

from support import assert_valid_png, run_cli
from dfdtrain.evaluation.evaluate import resolve_checkpoint, run_evaluation
from dfdtrain.evaluation.report import format_breakdown
from dfdtrain.metrics import REPORTED_RULES as RULES, roc_auc

BASE_PLOTS = ("roc.png", "pr.png", "calibration.png", "confusion.png", "histogram.png")


def read_predictions(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


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
    # a GRU head: its per-position scores are its recurrent steps, and every output says so
    assert metrics["position_scores"]["kind"] == "step" and "frame_scores" not in rows[0]
    assert sum(len(row["step_scores"].split()) for row in rows) == metrics["frames"]
    report = (out_dir / "report.md").read_text()
    assert "per-frame scores are step scores: the recurrent state after frames 1..t" in report

    for plot in BASE_PLOTS:
        assert_valid_png(out_dir / plot)
    assert not (out_dir / "breakdown.png").exists() and "breakdown" not in metrics  # one dataset, no methods
    note = "no breakdown: one dataset (folder) and no manipulation methods in the metadata"
    assert metrics["breakdown_note"].startswith(note) and note in (out_dir / "report.md").read_text()
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
    printed = format_breakdown(metrics["breakdown"]).splitlines()  # what the command prints under the table
    assert printed[0] == "video AUC per dataset and method (head score):" and len(printed) == 1 + 1 + 4
    assert any(line.split()[:2] == ["method", "Deepfakes"] for line in printed)
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
    typo = run_cli("evaluate", "--run", tmp_path, "--shards", f"{tmp_path}/*.tar", "--out", tmp_path / "out",
                   "--decoder", "pyavv")  # named before anything is read (it used to skip every video instead)
    assert typo.returncode == 2 and typo.stderr.strip().splitlines() == [
        "dfdtrain evaluate: error: --decoder: unknown decoder 'pyavv'; did you mean pyav? (known: auto, dali, pyav, "
        "sequential, torchcodec)"]


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


def corrupt_copy(shards, out):
    """A copy of ``shards`` (tars + index.json) with two tars damaged: one truncated to 40% of its bytes, one with
    a member header overwritten in the middle (tarfile then ends there without a word). Returns the two names."""
    import shutil
    import tarfile

    shutil.copytree(shards, out)
    tars = sorted(out.glob("*.tar"), key=lambda path: path.stat().st_size)[-2:]  # the two largest: several videos
    truncated, overwritten = tars
    truncated.write_bytes(truncated.read_bytes()[:int(truncated.stat().st_size * 0.4)])
    with tarfile.open(overwritten) as tar:
        offset = tar.getmembers()[2].offset  # the second video's first member
    data = bytearray(overwritten.read_bytes())
    data[offset:offset + 512] = b"\x5a" * 512
    overwritten.write_bytes(bytes(data))
    return truncated.name, overwritten.name


def test_corrupt_shards_are_accounted_for_and_every_missing_video_named(trained_run, tmp_path):
    """A truncated tar and one with a corrupt member header: the sha256 check names the shard before reading;
    without it, every video index.json promises is scored, skipped or named missing (with the shard and the
    byte offset where reading stopped), a WARNING line says so, and --strict makes it an error."""
    shards = tmp_path / "shards"
    truncated, overwritten = corrupt_copy(trained_run.parent / "shards", shards)
    index = json.loads((shards / "index.json").read_text())
    promised = {key: shard["name"] for shard in index["shards"] for key in shard["keys"]}
    assert len(promised) == 12

    def evaluate(out, *options, folder=shards):
        return run_cli("evaluate", "--run", trained_run, "--shards", f"{folder}/*.tar", "--out", tmp_path / out,
                       "--workers", "1", *options)

    verified = evaluate("verified")
    assert verified.returncode == 2 and len(verified.stderr.strip().splitlines()) == 1, verified.stderr
    assert "sha256" in verified.stderr and (truncated in verified.stderr or overwritten in verified.stderr)

    result = evaluate("eval", "--no-verify-shards")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "eval/metrics.json").read_text())
    scored = {row["key"] for row in read_predictions(tmp_path / "eval/predictions.csv")}
    named = {item["key"]: item for item in metrics["skipped"]["samples"] if item["key"]}
    assert scored and not scored & set(named)
    assert scored | set(named) == set(promised)  # every promised video: scored, or named with a reason
    assert {promised[key] for key in named} == {truncated, overwritten}
    for key, item in named.items():
        assert item["shard"].endswith(promised[key]) and item["reason"] in ("missing", "unreadable"), item
    stops = {Path(item["shard"]).name: item for item in metrics["skipped"]["samples"]
             if item["reason"] == "unreadable-shard"}
    assert set(stops) == {truncated, overwritten}
    assert all(f"at byte {item['offset']}" in item["detail"] and item["offset"] > 0 for item in stops.values())
    accounting = metrics["accounting"]
    assert accounting["promised"] == 12 and accounting["scored"] == len(scored) == metrics["videos"]
    assert accounting["missing"] == sum(item["reason"] == "missing" for item in named.values()) > 0
    warning = [line for line in result.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warning) == 1 and f"{len(named)} of the 12 videos index.json promises were not scored" in warning[0]
    assert "were not scored" in (tmp_path / "eval/report.md").read_text()

    strict = evaluate("strict", "--no-verify-shards", "--strict")
    assert strict.returncode == 2 and "were not scored" in strict.stderr and "Traceback" not in strict.stderr
    assert (tmp_path / "strict/metrics.json").is_file()  # the files are written first

    clean = evaluate("clean", folder=trained_run.parent / "shards")  # the intact shards pass the sha256 check
    assert clean.returncode == 0 and "WARNING" not in clean.stderr, clean.stderr[-2000:]


def test_evaluate_out_naming_a_file_is_one_line_before_scoring(trained_run, tmp_path):
    """--out naming an existing file (or a folder inside one) used to score every video, then fail to write
    with a traceback: now one line, before anything is read."""
    import subprocess
    import sys

    taken = tmp_path / "taken.json"
    taken.write_text("{}")
    shards = str(trained_run.parent / "shards" / "val-*.tar")
    processes = [subprocess.Popen([sys.executable, "-m", "dfdtrain", "evaluate", "--run", str(trained_run),
                                   "--shards", shards, "--out", str(out), "--workers", "0"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for out in (taken, taken / "eval")]
    expected = [f"--out {taken} is an existing file, not a folder",
                f"--out {taken / 'eval'} is inside {taken}, which is an existing file, not a folder"]
    for process, line in zip(processes, expected):
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 2, stderr[-3000:]
        assert stderr.strip().splitlines() == [f"dfdtrain evaluate: error: {line}: name a folder to write into"]
    assert taken.read_text() == "{}"


def test_majority_votes_at_the_calibrated_threshold_like_the_head(trained_run, tmp_path):
    """The issue's detector: every score sigmoid(0.5) = 0.6225 raw, 0.7478 calibrated (T 0.46), threshold 0.7503.
    The head calls every video REAL; score_majority used to be 1.0 for every video (raw frames voting at 0.5), its
    confusion every video FAKE. Now every frame is on the calibrated scale and votes at the verdict's threshold:
    every rule and the frame level call what the head calls."""
    from support import constant_bundle

    bundle = constant_bundle(trained_run, tmp_path / "bundle")
    out = tmp_path / "eval"
    result = run_cli("evaluate", "--checkpoint", bundle, "--shards", f"{trained_run.parent}/shards/val-*.tar", "--out",
                     out, "--workers", "0", "--bootstrap", "0", "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads(result.stdout)
    head = metrics["video"]["head"]["confusion"]
    assert metrics["threshold"] == 0.7503 and head["tp"] == head["fp"] == 0 and head["tn"] + head["fn"] == 4
    for rule in RULES:
        assert metrics["video"][rule]["confusion"] == head, rule
    assert metrics["frame"]["confusion"]["tp"] == metrics["frame"]["confusion"]["fp"] == 0
    calibrated = 1 / (1 + np.exp(-0.5 / 0.46))
    for row in read_predictions(out / "predictions.csv"):
        assert float(row["score"]) == pytest.approx(calibrated, abs=1e-6) and float(row["score_majority"]) == 0.0
        assert all(float(score) == pytest.approx(calibrated, abs=1e-6) for score in row["step_scores"].split())
