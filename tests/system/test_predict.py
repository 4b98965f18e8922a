"""Single-video prediction and model export, with the small trained detector and real videos."""

import dataclasses
import json
import math
import re
import shutil
import subprocess
import sys

import av
import numpy as np
import pytest

from dfdtrain.inference.predict import Predictor

DFDC_CLIP = "dfdc/dfdc_train_part_0/brtujopkby.mp4"
FFPP_CLIP = "ffpp/manipulated_sequences/Deepfakes/c40/videos/183_253.mp4"

def run_dfdtrain(*args):
    return subprocess.run([sys.executable, "-m", "dfdtrain", *map(str, args)], capture_output=True, text=True,
                          timeout=600)


def write_faceless_video(path, frames=16, size=128):
    """Smooth moving colour gradients, H.264: a decodable video with no face in it."""
    ramp = np.linspace(0, 1, size)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("h264", rate=25)
        stream.width, stream.height, stream.pix_fmt = size, size, "yuv420p"
        for index in range(frames):
            phase = index / frames
            red = np.outer(ramp, np.ones(size)) * 200
            green = np.outer(np.ones(size), ramp) * 150 + 50 * phase
            blue = np.full((size, size), 100 + 80 * phase)
            rgb = np.stack([red, green, blue], axis=-1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def videos(fixtures, tmp_path_factory):
    folder = tmp_path_factory.mktemp("predict_videos")
    truncated = folder / "truncated.mp4"
    data = (fixtures / FFPP_CLIP).read_bytes()
    truncated.write_bytes(data[: len(data) // 2])
    text = folder / "notes.mp4"
    text.write_text("these are meeting notes, not a video\n" * 20)
    return {
        "dfdc": str(fixtures / DFDC_CLIP),
        "ffpp": str(fixtures / FFPP_CLIP),
        "truncated": str(truncated),
        "text": str(text),
        "faceless": str(write_faceless_video(folder / "faceless.mp4")),
    }


def test_predict_scores_good_files_and_reports_bad_ones_in_input_order(trained_run, videos):
    order = ["dfdc", "truncated", "text", "faceless", "ffpp"]
    predictor = Predictor(trained_run, faces="mtcnn", batch_size=2, progress=False)
    results = predictor.predict([videos[name] for name in order])

    assert [result["path"] for result in results] == [videos[name] for name in order]
    by_name = dict(zip(order, results))
    for name in ("dfdc", "ffpp"):
        result = by_name[name]
        assert "error" not in result, result
        assert 0.0 <= result["p_fake"] <= 1.0
        assert result["verdict"] == ("FAKE" if result["p_fake"] >= predictor.threshold else "REAL")
        # a GRU head: its positions are recurrent steps (cumulative), named so; the last step is the video score
        assert "frame_scores" not in result and result["frames_used"] == 4 and len(result["step_scores"]) == 4
        assert all(0.0 <= score <= 1.0 for score in result["step_scores"] + result["step_scores_raw"])
        # on the verdict's scale (calibrated) as p_fake is, and before calibration as p_fake_raw is
        assert result["step_scores"][-1] == pytest.approx(result["p_fake"], abs=1e-6)
        assert result["step_scores_raw"][-1] == pytest.approx(result["p_fake_raw"], abs=1e-6)
        assert result["p_fake"] == pytest.approx(
            float(predictor.calibration.probability(np.log(result["p_fake_raw"] / (1 - result["p_fake_raw"])))))
        assert result["faces_found"] >= 1
    assert by_name["dfdc"]["video"]["width"] == 1080 and by_name["dfdc"]["video"]["height"] == 1920
    assert by_name["ffpp"]["video"]["codec"] == "h264"
    assert by_name["truncated"]["error"].startswith("truncated")
    assert by_name["text"]["error"].startswith("undecodable")
    assert by_name["faceless"]["error"] == "no face found in 4 sampled frames"
    assert all("\n" not in result.get("error", "") for result in results)

    # the same files one at a time give the same scores: batching does not change a video's result
    alone = Predictor(trained_run, faces="mtcnn", batch_size=1, progress=False).predict([videos["ffpp"]])
    assert alone[0]["p_fake"] == pytest.approx(by_name["ffpp"]["p_fake"], abs=1e-6)


def test_predict_without_face_detection_uses_the_centre_crop(trained_run, videos):
    result = Predictor(trained_run, faces="none", num_frames=6, progress=False).predict([videos["faceless"]])[0]
    assert "error" not in result, result
    assert 0.0 <= result["p_fake"] <= 1.0
    assert result["frames_used"] == 6 and result["faces_found"] is None


def test_cli_json_output_and_exit_codes(trained_run, videos):
    mixed = run_dfdtrain("predict", "--checkpoint", trained_run, "--json", "--faces", "none", "--quiet",
                         videos["ffpp"], videos["text"])
    assert mixed.returncode == 1, mixed.stderr
    results = json.loads(mixed.stdout)
    assert [result["path"] for result in results] == [videos["ffpp"], videos["text"]]
    assert 0.0 <= results[0]["p_fake"] <= 1.0 and results[1]["error"].startswith("undecodable")
    assert results[0]["seconds"] > 0 and results[1]["seconds"] >= 0  # per video: decode, crop and its model share
    stages = results[0]["stage_seconds"]  # and per stage
    assert list(stages) == ["decode", "faces", "crop", "model", "total"] and stages["decode"] > 0
    assert stages["total"] == results[0]["seconds"]
    assert sum(stages[stage] for stage in ("decode", "faces", "crop", "model")) == pytest.approx(stages["total"],
                                                                                                 abs=0.003)

    # the human output: a block per video with what the README promises (verdict, p_fake calibrated and raw,
    # frames used, faces found, the per-step scores, seconds per stage); an error stays one line
    human = run_dfdtrain("predict", "--checkpoint", trained_run, "--quiet", videos["ffpp"], videos["text"])
    assert human.returncode == 1, human.stderr
    lines = human.stdout.splitlines()
    assert len(lines) == 6, human.stdout
    verdict, score, path = lines[0].split()
    assert verdict in ("FAKE", "REAL") and 0.0 <= float(score) <= 1.0 and path == videos["ffpp"]
    assert re.fullmatch(r"  calibrated P\(fake\) \(temperature \S+; raw [01]\.\d{3}\), threshold [01]\.\d{3}",
                        lines[1]), lines[1]
    assert re.fullmatch(r"  frames 4 used of 4 \(video: \d+ frames, 1280x720 h264\), "
                        r"faces found in [1-4] of 4 frames", lines[2]), lines[2]
    assert lines[3].startswith("  step scores (calibrated): ") and len(lines[3].split(": ")[1].split()) == 4
    assert lines[4].startswith("  seconds: decode ") and all(f"{stage} " in lines[4]
                                                               for stage in ("faces", "crop", "model", "total"))
    assert lines[5].startswith(f"ERROR {videos['text']}: undecodable")

    missing = run_dfdtrain("predict", "--checkpoint", trained_run / "nope", videos["ffpp"])
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "checkpoint not found" in missing.stderr


def test_position_scores_are_on_the_verdicts_scale_and_raw_is_labelled(trained_run, videos):
    """The per-step scores get the video's calibration (so they read against the threshold as p_fake does); the
    values before it are kept under *_raw; ``scales`` says which field is on which scale."""
    from dfdtrain.metrics.calibration import Calibration

    predictor = Predictor(trained_run, faces="none", progress=False)
    predictor.calibration = dataclasses.replace(predictor.calibration, temperature=0.25)  # far from raw
    result = predictor.predict([videos["ffpp"]])[0]
    assert "error" not in result, result
    raw_logits = [math.log(score) - math.log1p(-score) for score in result["step_scores_raw"]]
    assert result["step_scores"] == pytest.approx([1 / (1 + math.exp(-logit / 0.25)) for logit in raw_logits],
                                                  abs=1e-9)
    assert result["step_scores"][-1] == pytest.approx(result["p_fake"], abs=1e-6)  # the GRU's last step
    assert result["step_scores_raw"][-1] == pytest.approx(result["p_fake_raw"], abs=1e-6)
    assert (result["step_scores"][-1] >= result["threshold"]) == (result["verdict"] == "FAKE")
    assert result["scales"] == {"p_fake": "calibrated", "threshold": "calibrated", "step_scores": "calibrated",
                                "p_fake_raw": "raw", "step_scores_raw": "raw"}
    assert result["temperature"] == 0.25 and result["clip_frames"] == 4

    predictor.calibration = Calibration()  # never fitted (T = 1): the verdict's fields are raw, and say so
    assert predictor.scales()["p_fake"] == predictor.scales()["step_scores"] == "raw"


def test_export_bundle_onnx_and_torchscript_match_the_checkpoint(trained_run, videos, tmp_path):
    exported = run_dfdtrain("export", "--checkpoint", trained_run, "--out", tmp_path / "export", "--onnx",
                            "--torchscript")
    assert exported.returncode == 0, exported.stderr
    assert "max |onnxruntime - PyTorch|" in exported.stdout and "max |TorchScript - PyTorch|" in exported.stdout
    assert "Warning" not in exported.stderr, exported.stderr  # tracing's noise; the check against PyTorch tells
    for name in ("model.safetensors", "detector.json", "model.onnx", "model.ts"):
        assert (tmp_path / "export" / name).is_file()

    # the bundle alone, away from the run directory, scores the same files the same way
    bundle = shutil.copytree(tmp_path / "export", tmp_path / "elsewhere" / "bundle")
    files = [videos["ffpp"], videos["faceless"]]
    from_checkpoint = Predictor(trained_run, faces="none", progress=False).predict(files)
    from_bundle = Predictor(bundle, faces="none", progress=False).predict(files)
    for expected, got in zip(from_checkpoint, from_bundle):
        assert got["p_fake"] == pytest.approx(expected["p_fake"], abs=1e-6)
        assert got["step_scores"] == pytest.approx(expected["step_scores"], abs=1e-6)


def test_onnx_and_torchscript_of_a_transformer_head_match_pytorch(tmp_path):
    from dfdtrain.commands.export import TOLERANCE, export_onnx, export_torchscript
    from dfdtrain.models.detector import build_detector

    model = build_detector("mobilenetv2_050", "transformer", head_options={"hidden": [8]}).eval()
    assert export_onnx(model, "transformer", tmp_path / "model.onnx", frames=3, size=32) <= TOLERANCE
    assert export_torchscript(model, tmp_path / "model.ts", frames=3, size=32) <= TOLERANCE
