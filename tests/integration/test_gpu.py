"""The GPU paths for real, on a CUDA GPU (`pytest -m gpu`; the GPU acceptance kit runs them: benchmarks/gpu/).

Without CUDA every test here is skipped, with that reason. With CUDA none is skipped: DALI and the packages the kit
carries must import, and a missing one fails its test (a skip would hide the GPU path it is to prove).
  * DALI ``mixed`` (NVDEC) decodes the real fixtures' H.264 (720p landscape, 1080x1920 portrait, a fake) to PyAV's
    frames within tests/integration/test_dali.py's colour tolerance, and generated H.264 clips (B-frames) to exactly the
    frames asked for; the DALI shard loader puts them on the GPU.
  * ``dfdtrain predict --device cuda`` scores as the CPU does (crops without boxes: the same pixels in), and with
    MTCNN on the GPU finds the faces; ``dfdtrain evaluate --device cuda --decoder dali`` scores every video of the
    FF++ 183/253 group close to the CPU/PyAV evaluation.
  * one bf16 + channels_last training epoch on the GPU, fed by the DALI loader, with finite losses, GPU memory
    in its log lines and a checkpoint.
"""

import csv
import json
import math

import numpy as np
import pytest
import torch

from support import make_synth_shards, run_cli, train_tiny

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(),
                       reason="needs a CUDA GPU (torch.cuda.is_available() is False): GPU-marked tests run on a GPU "
                              "machine, e.g. through bash benchmarks/gpu/run.sh"),
]

REAL_CLIPS = ["ffpp/original_sequences/youtube/c40/videos/183.mp4",  # 1280x720
              "dfdc/dfdc_train_part_0/brtujopkby.mp4",  # 1080x1920 portrait, no rotation flag
              "ffpp/manipulated_sequences/Deepfakes/c40/videos/183_253.mp4"]
PREDICT_CLIPS = ["dfdc/dfdc_train_part_0/brtujopkby.mp4", "ffpp/manipulated_sequences/Deepfakes/c40/videos/183_253.mp4"]
# GPU vs CPU: cuDNN (TF32 convolutions by default) and a different summation order move the scores a little
SAME_PIXELS_TOLERANCE = 5e-3
# DALI vs PyAV frames differ by ~1.5/255 on average (chroma upsampling): a small model's scores move a little more
DALI_SCORE_TOLERANCE = 0.05


def dali_test_helpers():
    """tests/integration/test_dali.py's tolerance and frame check; DALI must import here (importing it is the check)."""
    import nvidia.dali  # noqa: F401  (an ImportError fails the test: on a GPU machine DALI must be there)
    from support import MEAN_TOLERANCE, P99_TOLERANCE, assert_close_to_pyav

    return MEAN_TOLERANCE, P99_TOLERANCE, assert_close_to_pyav


def test_dali_mixed_decode_matches_pyav_on_the_real_fixtures(fixtures):
    from dfdtrain.data.decode.dali import DaliDecoder
    from dfdtrain.data.decode.decoders import build_decoder
    from dfdtrain.data.decode.sampler import SamplerConfig, sample_indices
    from dfdtrain.data.decode.video import probe

    mean_tolerance, p99_tolerance, _ = dali_test_helpers()
    dali, pyav = DaliDecoder("gpu"), build_decoder("pyav")
    assert dali.device == "gpu"  # fn.decoders.video with device "mixed": NVDEC
    for clip in REAL_CLIPS:
        data = (fixtures / clip).read_bytes()
        info = probe(data, name=clip)
        indices, _ = sample_indices(info["frames"], SamplerConfig(mode="uniform", num_frames=16))
        frames = dali.read(data, indices, name=clip)
        expected = pyav.read(data, indices, name=clip)
        assert frames.shape == expected.shape == (16, info["height"], info["width"], 3) and frames.dtype == np.uint8
        difference = np.abs(frames.astype(np.int16) - expected.astype(np.int16))
        mean, p99 = difference.mean(), np.percentile(difference, 99)
        assert mean < mean_tolerance and p99 <= p99_tolerance, (clip, mean, p99)


def test_dali_mixed_decode_gives_exactly_the_frames_asked_for(tmp_path):
    """Generated H.264 clips (B-frames, every frame different): each DALI frame is nearest to PyAV's frame of
    the same index, in any order and with repeats (tests/integration/test_dali.py's check, on NVDEC)."""
    from dfdtrain.data.decode.dali import DaliDecoder
    from dfdtrain.demo.synth import synthesize

    _, _, assert_close_to_pyav = dali_test_helpers()
    synthesize(tmp_path, count=4, frames=16, width=64, height=48, codec="h264", gop=8, progress=False)
    decoder = DaliDecoder("gpu")
    clips = sorted(tmp_path.glob("*/*/*.mp4"))
    assert len(clips) == 4
    for path in clips:
        assert_close_to_pyav(decoder.read(str(path), range(16)), str(path), list(range(16)), 16)
        unsorted = [15, 0, 7, 3, 3, 9, 15]
        frames = decoder.read(path.read_bytes(), unsorted, name=path.name)
        assert_close_to_pyav(frames, str(path), unsorted, 16)
        assert np.array_equal(frames[3], frames[4]) and np.array_equal(frames[0], frames[6])


def test_dali_shard_loader_decodes_onto_the_gpu(tmp_path):
    from dfdtrain.config import SamplerConfig
    from dfdtrain.data.decode.dali_shards import DaliShardLoader
    from dfdtrain.data.ingest.manifest import load_manifest

    _, _, assert_close_to_pyav = dali_test_helpers()
    shards = make_synth_shards(tmp_path, count=6, frames=16, val_fraction=0, target_bytes=40_000, seed=5, width=64,
                               height=48)
    rows = {row["key"]: row for row in load_manifest(tmp_path / "m.jsonl")}
    loader = DaliShardLoader(sorted(str(path) for path in shards.glob("*.tar")), 3, SamplerConfig("uniform", 8),
                             device="gpu", train=False)
    seen = []
    for batch in loader:
        assert batch["frames"].device.type == "cuda" and batch["frames"].dtype == torch.uint8
        for number, key in enumerate(batch["key"]):
            real = int(batch["mask"][number].sum())
            indices = batch["indices"][number, :real].tolist()
            row = rows[key]
            assert_close_to_pyav(batch["frames"][number, :real].cpu().numpy(), f"{row['root']}/{row['path']}",
                                 indices, row["frames"])
            seen.append(key)
    assert sorted(seen) == sorted(rows)


def predictions(completed):
    assert completed.returncode == 0, completed.stderr[-3000:]
    return {result["path"]: result for result in json.loads(completed.stdout)}


def test_predict_on_cuda_scores_as_the_cpu_does(trained_run, fixtures):
    from dfdtrain.inference.predict import Predictor

    videos = [str(fixtures / clip) for clip in PREDICT_CLIPS]
    on_gpu = predictions(run_cli("predict", "--checkpoint", trained_run, "--device", "cuda", "--faces", "none",
                                 "--json", "--quiet", *videos))
    on_cpu = {result["path"]: result for result in
              Predictor(trained_run, device="cpu", faces="none", progress=False).predict(videos)}
    for video in videos:
        assert "error" not in on_gpu[video], on_gpu[video]
        assert on_gpu[video]["p_fake_raw"] == pytest.approx(on_cpu[video]["p_fake_raw"], abs=SAME_PIXELS_TOLERANCE)
        assert on_gpu[video]["frames_used"] == on_cpu[video]["frames_used"]

    with_faces = predictions(run_cli("predict", "--checkpoint", trained_run, "--device", "cuda", "--json", "--quiet",
                                     *videos))  # MTCNN on the GPU too
    for video in videos:
        result = with_faces[video]
        assert "error" not in result and result["faces_found"] >= 1, result
        assert 0.0 <= result["p_fake"] <= 1.0 and result["verdict"] in ("REAL", "FAKE")


def read_scores(out_dir):
    """{video key: the head's score} from an evaluation's predictions.csv."""
    with open(out_dir / "predictions.csv") as handle:
        return {row["key"]: float(row["score"]) for row in csv.DictReader(handle)}


def test_evaluate_on_cuda_with_dali_matches_the_cpu(trained_run, ffpp_shards, tmp_path):
    common = ["evaluate", "--run", trained_run, "--checkpoint", "last", "--shards", f"{ffpp_shards}/*.tar",
              "--bootstrap", "0", "--batch-size", "4", "--json"]
    gpu = run_cli(*common, "--out", tmp_path / "gpu", "--device", "cuda", "--decoder", "dali")
    assert gpu.returncode == 0, gpu.stderr[-3000:]
    cpu = run_cli(*common, "--out", tmp_path / "cpu", "--device", "cpu", "--decoder", "pyav", "--workers", "4")
    assert cpu.returncode == 0, cpu.stderr[-3000:]
    gpu_metrics, cpu_metrics = json.loads(gpu.stdout), json.loads(cpu.stdout)
    assert gpu_metrics["videos"] == cpu_metrics["videos"] == 10  # 183, 253 and their 8 fakes
    assert gpu_metrics["skipped"]["count"] == 0
    gpu_scores, cpu_scores = read_scores(tmp_path / "gpu"), read_scores(tmp_path / "cpu")
    assert set(gpu_scores) == set(cpu_scores) and len(gpu_scores) == 10
    for key, score in gpu_scores.items():
        assert score == pytest.approx(cpu_scores[key], abs=DALI_SCORE_TOLERANCE), key


def test_bf16_training_epoch_on_cuda_with_the_dali_loader(tmp_path):
    shards = make_synth_shards(tmp_path, count=12, frames=8, val_fraction=0.34, target_bytes=60_000, seed=11)
    run_dir = tmp_path / "run"
    completed = train_tiny(run_dir, shards, "train.device=cuda", "train.precision=bf16", "model.channels_last=true",
                           "data.decoder=dali", "train.log_every=2")
    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    train_rows = [row for row in rows if row["kind"] == "train"]
    assert train_rows and all(math.isfinite(row["loss"]) for row in train_rows)
    assert all(row["gpu_max_memory_mb"] > 0 for row in train_rows)  # the step ran on the GPU
    assert any(row["kind"] == "eval" for row in rows)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["device"] == "cuda" and report["epochs_run"] == 1
    assert (run_dir / "checkpoints" / "last" / "checkpoint.pt").is_file()
