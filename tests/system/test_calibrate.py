"""Calibration through the real commands on a trained detector: calibrate, predict/evaluate/export use it,
training stores one per checkpoint, and model selection never sees test data."""

import json
import math

import pytest

from support import constant_bundle, make_synth_shards, run_cli, subset_shards, train_tiny


def make_overconfident_bundle(run_dir, out, factor=40.0):
    """A bundle of the trained detector whose video logits are ``factor`` times too large (its head's last
    layer scaled): the raw model is over-confident by construction."""
    import torch
    from safetensors.torch import save_file

    from dfdtrain.models.bundle import BUNDLE_WEIGHTS, load_detector, write_settings

    model, settings = load_detector(run_dir)
    last = [module for module in model.head.modules() if isinstance(module, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.mul_(factor)
        last.bias.mul_(factor)
    out.mkdir(parents=True)
    save_file({name: value.contiguous() for name, value in model.state_dict().items()}, str(out / BUNDLE_WEIGHTS))
    write_settings(settings, out)
    return out


def test_calibrate_that_cannot_fit_writes_nothing_unless_forced_and_labels_the_fallback(trained_run, tmp_path):
    """1 real and 2 fake videos: calibrate used to exit 0 and replace the fitted T 0.46 / threshold 0.7503 with
    temperature 1 and threshold 0.5 labelled "(eer)". Now it exits 2 with one line naming the class, and
    detector.json stays byte-identical; --force writes the fallback, labelled as one."""
    import shutil
    import subprocess
    import sys

    bundle = constant_bundle(trained_run, tmp_path / "bundle")
    forced_bundle = shutil.copytree(bundle, tmp_path / "forced")
    before = (bundle / "detector.json").read_bytes()
    shards = subset_shards(trained_run, tmp_path / "shards", lambda rows: (
        [row for row in rows if row["label"] == 0][:1] + [row for row in rows if row["label"] == 1][:2]))
    # the refused and the forced command side by side (each on its own copy of the bundle): half the wall time
    processes = [subprocess.Popen([sys.executable, "-m", "dfdtrain", "calibrate", "--checkpoint", str(folder),
                                   "--shards", f"{shards}/*.tar", "--workers", "0", "--threshold-rule", "eer", *extra],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for folder, extra in ((bundle, ()), (forced_bundle, ("--force",)))]
    outputs = [process.communicate(timeout=600) for process in processes]
    refused, forced = [subprocess.CompletedProcess(process.args, process.returncode, *output)
                       for process, output in zip(processes, outputs)]
    lines = refused.stderr.strip().splitlines()
    assert refused.returncode == 2 and len(lines) == 1, refused.stderr[-3000:]
    assert lines[0].startswith("dfdtrain calibrate: error: ") and "calibration not fitted" in lines[0]
    assert "too few real videos (1 real, 2 fake" in lines[0] and "nothing written" in lines[0]
    assert "keeps temperature 0.46, threshold 0.7503" in lines[0] and "--force" in lines[0]
    assert (bundle / "detector.json").read_bytes() == before

    assert forced.returncode == 0, forced.stderr[-3000:]
    assert f"{forced_bundle}: FALLBACK, nothing fitted (temperature 1, threshold 0.5 as configured)" in forced.stdout
    stored = json.loads((forced_bundle / "detector.json").read_text())
    assert stored["calibration"]["threshold_rule"] == "fallback" and stored["calibration"]["temperature"] == 1.0
    assert stored["threshold"] == 0.5 and "not fitted: too few real videos" in stored["calibration"]["fitted_on"]


def test_calibrate_fixes_an_overconfident_detector_and_predict_evaluate_export_use_it(trained_run, tmp_path):
    shards = trained_run.parent / "shards"
    bundle = make_overconfident_bundle(trained_run, tmp_path / "bundle")
    result = run_cli("calibrate", "--checkpoint", bundle, "--shards", f"{shards}/*.tar", "--workers", "0",
                     "--threshold-rule", "max_f1", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    fitted = json.loads(result.stdout)
    assert fitted["nll_calibrated"] < fitted["nll_raw"] and fitted["ece_calibrated"] < fitted["ece_raw"]
    assert fitted["temperature"] > 1.0 and fitted["threshold_rule"] == "max_f1" and fitted["videos"] == 12
    stored = json.loads((bundle / "detector.json").read_text())
    assert stored["calibration"]["temperature"] == fitted["temperature"]
    assert stored["threshold"] == fitted["threshold"]

    # evaluate applies it: on these videos the calibrated log-loss and ECE are the fitted ones
    out = tmp_path / "eval"
    result = run_cli("evaluate", "--checkpoint", bundle, "--shards", f"{shards}/*.tar", "--out", out, "--workers",
                     "0", "--bootstrap", "200", "--json")
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = json.loads(result.stdout)
    summary = metrics["calibration"]
    assert summary["log_loss"] == pytest.approx(fitted["nll_calibrated"], abs=1e-6)
    assert summary["log_loss_raw"] == pytest.approx(fitted["nll_raw"], abs=1e-6)
    assert summary["ece"] < summary["ece_raw"] and metrics["threshold"] == fitted["threshold"]
    for level in ("video", "frame"):
        assert set(metrics["intervals"][level]) == {"auc", "ap", "eer", "log_loss", "ece", "accuracy"}
    assert "raw -> " in (out / "report.md").read_text()

    # export carries it, and predict's p_fake is exactly sigmoid(raw logit / T), the verdict at the threshold
    exported = tmp_path / "exported"
    assert run_cli("export", "--checkpoint", bundle, "--out", exported).returncode == 0
    assert json.loads((exported / "detector.json").read_text())["calibration"] == stored["calibration"]
    videos = sorted(str(path) for path in (trained_run.parent / "data").rglob("*.mp4"))[:3]
    for checkpoint in (bundle, exported):
        result = run_cli("predict", "--checkpoint", checkpoint, "--faces", "none", "--json", "--quiet", *videos)
        assert result.returncode == 0, result.stderr[-2000:]
        for prediction in json.loads(result.stdout):
            raw = prediction["p_fake_raw"]
            logit = math.log(raw) - math.log1p(-raw)
            assert prediction["p_fake"] == pytest.approx(1 / (1 + math.exp(-logit / fitted["temperature"])), abs=1e-9)
            assert prediction["threshold"] == fitted["threshold"]
            assert prediction["verdict"] == ("FAKE" if prediction["p_fake"] >= fitted["threshold"] else "REAL")
    assert abs(prediction["p_fake"] - 0.5) < abs(raw - 0.5)  # less confident than the raw model


def test_training_stores_a_calibration_with_each_checkpoint(trained_run):
    for tag in ("best", "last"):
        calibration = json.loads((trained_run / "checkpoints" / tag / "detector.json").read_text())["calibration"]
        assert calibration["fitted_on"].startswith("validation after epoch 1") and calibration["videos"] == 4
        assert calibration["temperature"] > 0 and calibration["nll_calibrated"] <= calibration["nll_raw"] + 1e-12
    report = json.loads((trained_run / "report.json").read_text())
    assert report["calibration"]["temperature"] == calibration["temperature"]


@pytest.fixture(scope="module")
def split_shards(tmp_path_factory):
    """Generated clips indexed with a test split, sharded; and the same videos indexed again with another seed
    (another index whose val split holds videos of the first one's test split)."""
    from dfdtrain.data.ingest.manifest import build_manifest, write_manifest
    from dfdtrain.data.shards.writer import write_shards

    root = tmp_path_factory.mktemp("splits")
    make_synth_shards(root / "a", count=12, frames=8, val_fraction=0.25, target_bytes=10_000_000, seed=4)
    rows, summary = build_manifest("folder", root / "a" / "data", val_fraction=0.25, test_fraction=0.25,
                                   progress=False)
    write_manifest(root / "first.jsonl", rows, summary)
    write_shards(root / "first.jsonl", root / "first", target_bytes=10_000_000, progress=False)
    other, summary = build_manifest("folder", root / "a" / "data", val_fraction=0.5, test_fraction=0.25, seed=99,
                                    progress=False)
    write_manifest(root / "second.jsonl", other, summary)
    write_shards(root / "second.jsonl", root / "second", target_bytes=10_000_000, progress=False)
    test_keys = {row["key"] for row in rows if row["split"] == "test"}
    assert test_keys & {row["key"] for row in other if row["split"] == "val"}, "the two splits must overlap"
    return root


def test_training_and_calibration_refuse_test_data_for_model_selection(split_shards, trained_run, tmp_path):
    first = split_shards / "first"
    result = train_tiny(tmp_path / "run", first, f"data.val_shards={first}/test-*.tar")
    assert result.returncode == 2, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert "data.val_shards" in line and "test-split shard" in line and "Traceback" not in result.stderr
    # another index of the same videos: its val split holds the first index's test videos
    result = train_tiny(tmp_path / "run", first, f"data.val_shards={split_shards}/second/val-*.tar")
    assert result.returncode == 2, result.stderr[-2000:]
    assert "in a test split of the same index" in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run" / "checkpoints").exists()
    refused = run_cli("calibrate", "--checkpoint", trained_run, "--shards", f"{first}/test-*.tar")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "test-split shard" in refused.stderr and "validation data only" in refused.stderr
