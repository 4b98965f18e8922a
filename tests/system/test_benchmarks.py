"""The benchmark scripts run for real (quick modes) and write complete JSON reports (no speed is asserted)."""

import json
import shutil
import subprocess
import sys

import pytest

from support import FIXTURES, REPO

METHOD_FIELDS = ("median_s", "frames_per_s", "videos_per_s")


def test_quick_decode_benchmark_writes_complete_json(tmp_path, fixtures):
    out = tmp_path / "decode.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "decode.py"), "--quick", "--fixtures", str(FIXTURES),
         "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert json.loads(result.stdout) == report  # printed and saved alike

    assert report["benchmark"] == "decode"
    for key in ("cpu", "cores", "gpu", "python", "av", "numpy", "torch", "nvidia_dali", "torchcodec"):
        assert key in report["machine"], key
    assert report["machine"]["cores"] > 0 and report["machine"]["cpu"]
    assert report["settings"]["quick"] is True and report["settings"]["repeats"] == 1
    assert report["settings"]["sampler"] == {"mode": "uniform", "num_frames": 16, "train": False}
    assert report["notes"] and all(isinstance(note, str) and note for note in report["notes"])
    assert report["seconds"] > 0

    comparisons = report["comparisons"]
    assert [item["codec"] for item in comparisons] == ["h264", "h264", "vp9"]  # FF++ 183, synth h264, synth vp9
    assert comparisons[0]["video"].endswith("183.mp4")
    for item in comparisons:
        assert item["frames"] > 0 and item["width"] > 0 and item["height"] > 0
        assert item["keyframes"] and item["keyframes"][0] == 0
        assert len(item["indices"]) == 16
        for method in ("pyav", "sequential"):
            stats = item["methods"][method]
            assert all(stats[field] > 0 for field in METHOD_FIELDS), (item["video"], method, stats)
            assert len(stats["times_s"]) == 1
        assert 0 < item["methods"]["pyav"]["packets_decoded_per_video"] <= item["frames"]
        assert 0 < item["methods"]["sequential"]["frames_decoded_per_video"] <= item["frames"]
        assert item["ratios"]["pyav_speedup_over_sequential"] > 0

    # DALI on the CPU and torchcodec: measured, or unavailable with a reason.
    vp9 = comparisons[2]
    for method, where in (("dali_cpu", [vp9]), ("torchcodec", comparisons)):
        if method in report["unavailable"]:
            assert report["unavailable"][method], method
            assert all(method not in item["methods"] for item in comparisons)
        else:
            for item in where:
                assert all(item["methods"][method][field] > 0 for field in METHOD_FIELDS)
                assert item["ratios"][f"{method}_speedup_over_pyav"] > 0
    # for people, beside the JSON: the summary with the ratios on stderr
    assert "== Decode: 16 sampled frames per video (cpu" in result.stderr
    assert "pyav_speedup_over_sequential" in result.stderr


def test_decode_benchmark_takes_any_folder_of_videos(tmp_path, fixtures):
    (tmp_path / "holiday").mkdir()
    shutil.copyfile(fixtures / "ffpp/original_sequences/youtube/c40/videos/183.mp4", tmp_path / "holiday" / "beach.mp4")
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "decode.py"), "--quick", "--fixtures",
                             str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout)["comparisons"][0]["video"] == "holiday/beach.mp4"
    empty = subprocess.run([sys.executable, str(REPO / "benchmarks" / "decode.py"), "--quick", "--fixtures",
                            str(tmp_path / "holiday" / "nothing")], capture_output=True, text=True, timeout=300)
    assert empty.returncode == 2 and "not a folder of videos" in empty.stderr


def test_model_stats_counts_parameters_and_flops(tmp_path):
    out = tmp_path / "models.json"
    result = subprocess.run([sys.executable, str(REPO / "benchmarks" / "model_stats.py"), "--quick", "--out", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    (mobilenet,) = report["detectors"]
    assert mobilenet["timm_name"] == "mobilenetv2_100" and 2.0 < mobilenet["params_backbone_m"] < 2.5
    # timm: mobilenetv2_100 is 0.31 GMACs at 224 px, i.e. ~0.6 GFLOPs per frame
    assert 0.5 < mobilenet["gflops_per_frame"] < 0.7
    assert mobilenet["gflops_per_clip_train"] == pytest.approx(3 * mobilenet["gflops_per_clip_forward"], rel=0.01)
