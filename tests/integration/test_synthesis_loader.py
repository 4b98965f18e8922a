"""The loaders' synthesis stages on real FF++ face clips with landmarks: a ``vb`` training source makes
data.synthesis_fraction of its real samples fake (label 1, ``synthetic`` set), each fake equals its real clip
outside the blend mask, a rebuilt loader makes the same fakes, shards without landmarks are refused in one line,
and ``preview --synthesis`` draws its sheet; evaluation (data.val_synthesis, ``evaluate --synthesis``) scores a
twin beside every real video, the same for any number of workers, and reports the twins apart."""

import json
import shutil

import numpy as np
import pytest
import torch

from support import clip_spec, run_cli
from dfdtrain.config import DataConfig
from dfdtrain.core.errors import DfdError
from dfdtrain.data.faces.clip_options import FaceClipOptions
from dfdtrain.data.faces.landmarks import track_points
from dfdtrain.data.faces.tracks import TrackOptions
from dfdtrain.data.loading.loader import VideoLoader
from dfdtrain.data.loading.sources import epoch_sources
from dfdtrain.data.loading.synthesis import SYNTHESES, synthesis_rng
from dfdtrain.data.loading.synthetic import clip_landmarks, synthesise_clip
from dfdtrain.data.shards.writer import write_shards

pytest.importorskip("facenet_pytorch")
pytest.importorskip("dlib")

YOUTUBE = "ffpp/original_sequences/youtube/c40/videos"
FRAMES, SIZE, BATCH = 4, 64, 4


@pytest.fixture(scope="module")
def shards(tmp_path_factory, fixtures):
    """Face-clip shards with landmarks of two real FF++ clips (one track each), and a copy whose index.json says
    they have none."""
    root = tmp_path_factory.mktemp("synthesis")
    rows = [{"key": f"real{name}", "path": f"{YOUTUBE}/{name}.mp4", "root": str(fixtures), "label": 0,
             "dataset": "test", "group": name, "split": "train"} for name in ("469", "183")]
    options = FaceClipOptions(size=96, landmarks="dlib68", tracks=TrackOptions(detect_every=10, max_tracks=1))
    write_shards(rows, root / "with", progress=False, store="faces", face_clip_options=options)
    shutil.copytree(root / "with", root / "without")
    index = json.loads((root / "without" / "index.json").read_text())
    index.pop("landmarks")
    (root / "without" / "index.json").write_text(json.dumps(index))
    return root


def loader_for(folder, synthesis="vb", fraction=0.5, seed=5, workers=1):
    data = DataConfig(train_sources=[{"shards": f"{folder}/*.tar", "synthesis": synthesis}], batch_size=BATCH,
                      num_workers=workers, epoch_samples=16, decoder="pyav", shuffle_buffer=4,
                      synthesis_fraction=fraction, augment={"enabled": False})
    spec = clip_spec(FRAMES, SIZE, crop="face")
    return VideoLoader(None, spec, data, train=True, rank=0, world_size=1, seed=seed)


def raw_batches(loader, epoch=0):
    loader.set_epoch(epoch)
    return list(loader._worker_batches())  # the uint8 clips, before normalisation


def test_the_fraction_of_reals_is_made_fake(shards):
    loader = loader_for(shards / "with", fraction=0.5)
    batches = raw_batches(loader)
    assert len(batches) == 4
    for batch in batches:  # every sample is a real of the vb source: every second one is made fake
        flags = batch["synthetic"]
        assert flags.dtype == torch.bool and flags.sum() == BATCH // 2
        assert torch.equal(batch["label"], flags.float())
        for meta, flag in zip(batch["meta"], flags.tolist()):
            assert meta["synthetic"] is flag and meta["label"] == int(flag) and meta["synthesis"] == "vb"
    (entry,) = epoch_sources(loader)
    assert (entry["samples"], entry["synthetic"], entry["kept_real"]) == (16, 8, 0)
    assert entry["synthetic_share"] == 0.5
    quarter = raw_batches(loader_for(shards / "with", fraction=0.25))
    assert sum(int(batch["synthetic"].sum()) for batch in quarter) == 4


def test_a_fake_equals_its_real_clip_outside_the_mask_and_a_rebuilt_loader_remakes_it(shards):
    fakes = raw_batches(loader_for(shards / "with"))
    reals = raw_batches(loader_for(shards / "with", synthesis=""))  # the same stream, no synthesis
    again = raw_batches(loader_for(shards / "with"))  # a resumed run: the loader built anew
    checked = 0
    for fake, real, repeat in zip(fakes, reals, again):
        assert fake["key"] == real["key"] == repeat["key"]
        assert torch.equal(fake["frames"], repeat["frames"]) and torch.equal(fake["synthetic"], repeat["synthetic"])
        for position, meta in enumerate(fake["meta"]):
            if not meta["synthetic"]:
                assert torch.equal(fake["frames"][position], real["frames"][position])
                continue
            source, made = real["frames"][position].numpy(), fake["frames"][position].numpy()
            assert (made != source).any()
            # the same synthesis on the real clip, from the seed the sample records: its mask bounds the change
            rng = synthesis_rng(5, 0, 0, tuple(meta["synthesis_sample"]))
            landmarks = stored_landmarks(shards / "with", meta, source.shape[1])
            result = SYNTHESES.get("vb")(source, landmarks, rng)
            assert np.array_equal(result.frames, made)
            outside = result.mask == 0
            assert outside.mean() > 0.3 and np.array_equal(made[outside], source[outside])
            checked += 1
    assert checked == 8
    other_epoch = raw_batches(loader_for(shards / "with"), epoch=1)
    assert not all(torch.equal(a["frames"], b["frames"]) for a, b in zip(fakes, other_epoch))


def stored_landmarks(folder, meta, size):
    """The landmarks the loader used for a batch meta's clip (its track at its frame indices)."""
    import webdataset as wds
    from types import SimpleNamespace

    for sample in wds.WebDataset(sorted(str(path) for path in folder.glob("*.tar")), shardshuffle=False):
        if sample["__key__"] == meta["key"]:
            track = next(t for t in json.loads(sample["json"])["tracks"] if t["id"] == meta["track_id"])
            indices = np.array(meta["frame_indices"])
            clip = SimpleNamespace(indices=indices, regions=np.tile([0, 0, track["size"], track["size"]],
                                                                    (len(indices), 1)).astype(float))
            return clip_landmarks(track_points(sample, track), clip, size, FRAMES)
    raise AssertionError(meta["key"])


def test_shards_without_landmarks_are_refused_in_one_line(shards):
    with pytest.raises(DfdError) as caught:
        loader_for(shards / "without")
    message = str(caught.value)
    assert "\n" not in message and "--landmarks dlib68" in message and "data.train_sources[0]" in message
    loader_for(shards / "without", synthesis="")  # without a synthesis: fine


def test_a_clip_without_landmarks_is_refused_by_the_stage(shards):
    from types import SimpleNamespace

    clip = SimpleNamespace(frames=torch.zeros(FRAMES, SIZE, SIZE, 3, dtype=torch.uint8), indices=np.arange(2),
                           regions=np.zeros((2, 4)), meta={"key": "k", "track": {"id": 0}})
    with pytest.raises(DfdError, match="k: its shards hold no facial landmarks.*--landmarks dlib68"):
        synthesise_clip("sbi", {"__key__": "k"}, clip, synthesis_rng(0, 0, 0, "k"))


def test_preview_draws_real_mask_and_synthesised_rows(shards, tmp_path):
    shard = sorted((shards / "with").glob("*.tar"))[0]
    out = tmp_path / "sheet.png"
    result = run_cli("preview", shard, "--synthesis", "sbi", "--out", out, "--frames", "4", "--json")
    assert result.returncode == 0, result.stderr
    drawn = json.loads(result.stdout)
    assert drawn["synthesis"] == "sbi" and drawn["samples"] and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    refused = run_cli("preview", sorted((shards / "without").glob("*.tar"))[0], "--synthesis", "vb", "--out",
                      tmp_path / "no.png")
    assert refused.returncode != 0 and "--landmarks dlib68" in refused.stderr


@pytest.mark.parametrize("value", [float("nan"), -0.1, 1.5])
def test_the_fraction_is_checked_in_one_line(value):
    from dfdtrain.config.schema import ConfigError

    with pytest.raises(ConfigError, match="data.synthesis_fraction"):
        DataConfig(synthesis_fraction=value)


def evaluation_items(folder, workers, synthesis="vb"):
    data = DataConfig(batch_size=3, num_workers=workers, decoder="pyav", val_synthesis=synthesis)
    loader = VideoLoader(f"{folder}/*.tar", clip_spec(FRAMES, SIZE, crop="face"), data, train=False, rank=0,
                         world_size=1, seed=5)
    items = {}
    for batch in loader._worker_batches():
        for position, key in enumerate(batch["key"]):
            items[key] = (batch["frames"][position], float(batch["label"][position]),
                          bool(batch["synthetic"][position]), batch["meta"][position])
    return items


def test_evaluation_puts_the_same_twin_beside_every_real_video_for_any_worker_count(shards):
    alone, split = evaluation_items(shards / "with", 0), evaluation_items(shards / "with", 2)
    assert sorted(alone) == sorted(split) == ["real183", "real183+vb", "real469", "real469+vb"]
    for key, (frames, label, synthetic, meta) in alone.items():
        assert torch.equal(frames, split[key][0])  # seeded by (seed, key, track) alone
        assert (label, synthetic) == ((1.0, True) if key.endswith("+vb") else (0.0, False))
        if synthetic:
            real = alone[meta["twin_of"]][0].numpy()
            rng = synthesis_rng(5, 0, 0, (meta["twin_of"], meta["track_id"]))
            result = SYNTHESES.get("vb")(real, stored_landmarks(shards / "with", {**meta, "key": meta["twin_of"]},
                                                                real.shape[1]), rng)
            assert np.array_equal(result.frames, frames.numpy()) and (result.frames != real).any()
    with pytest.raises(DfdError, match="data.val_synthesis.*--landmarks dlib68"):
        evaluation_items(shards / "without", 0)


def test_evaluate_reports_the_twins_apart_from_the_real_data(shards, tmp_path):
    from dfdtrain.checks import experiment_from_dict
    from dfdtrain.evaluation.evaluate import run_evaluation
    from dfdtrain.models.bundle import detector_settings, write_bundle
    from dfdtrain.models.detector import build_detector_from_config

    torch.manual_seed(0)
    config = experiment_from_dict({"model": {"backbone": "mobilenetv2_050", "head": "mean"},
                                   "clip": {"sampler": {"num_frames": FRAMES}, "image_size": SIZE, "crop": "face"}})
    model = build_detector_from_config(config.model, config.clip)
    bundle = write_bundle(model.eval(), detector_settings(config, model), tmp_path / "bundle")
    # batches of one: a video's score does not depend on what else its batch holds, to the last bit
    plain = run_evaluation(bundle, f"{shards / 'with'}/*.tar", tmp_path / "plain", batch_size=1, workers=0,
                           bootstrap=0)
    twins = run_evaluation(bundle, f"{shards / 'with'}/*.tar", tmp_path / "twins", batch_size=1, workers=0,
                           bootstrap=0, synthesis="vb")
    assert "synthetic" not in plain
    for name in ("video", "frame", "videos", "loss", "labels", "calibration", "accounting"):
        assert twins[name] == plain[name], name  # the real data's numbers: untouched by the twins
    assert twins["accounting"]["problem"] is None and twins["accounting"]["scored"] == 2
    synthetic = twins["synthetic"]
    assert (synthetic["videos"], synthetic["reals"], synthetic["method"]) == (2, 2, "vb")
    assert synthetic["auc"] is not None and 0 <= synthetic["accuracy"] <= 1
    lines = (tmp_path / "twins" / "predictions_synthetic.csv").read_text().splitlines()
    assert len(lines) == 3 and "real469+vb" in "\n".join(lines)
    assert "synthetic twins (vb)" in (tmp_path / "twins" / "report.md").read_text()
