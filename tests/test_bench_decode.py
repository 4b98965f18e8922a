"""benchmarks/decode.py --quick runs for real and writes a complete JSON report (no speed is asserted)."""

import json
import subprocess
import sys

from conftest import FIXTURES, REPO

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
