"""The clip contract: one video gives bit-identical model input through the evaluation loader (shards) and through
Predictor (the raw file), for centre crops, for face crops from the same boxes, and for face-clip shards."""

import json
from pathlib import Path

import pytest
import torch
import webdataset as wds

from support import SMALL_CLIP, frames_by_key
from dfdtrain.config import DataConfig
from dfdtrain.data.loading.clips import model_input, video_member
from dfdtrain.data.faces.clip_options import FaceClipOptions
from dfdtrain.data.loading.loader import VideoLoader
from dfdtrain.data.shards.writer import write_shards
from dfdtrain.data.faces.tracks import TrackOptions
from dfdtrain.inference.predict import Predictor

pytest.importorskip("facenet_pytorch")

FFPP = "ffpp/original_sequences/youtube/c40/videos"


def evaluation_inputs(shards, spec):
    """{key: model input [T,3,S,S]} of every video in ``shards`` through the evaluation loader (PyAV, 2 workers)."""
    data = DataConfig(decoder="pyav", num_workers=2, batch_size=2)
    return frames_by_key(VideoLoader(shards, spec, data, train=False))


def predictor_input(predictor, source, meta=None):
    clip = predictor.prepare(source, meta)
    return model_input(clip.frames[None], predictor.clip)[0], clip


def first_sample(shard):
    sample = next(iter(wds.WebDataset(str(shard), shardshuffle=False)))
    return {**sample, "meta": json.loads(sample["json"])}


def real_rows(fixtures, names):
    return [{"key": f"ffpp_{name}", "path": f"{FFPP}/{name}.mp4", "root": str(fixtures), "label": 0,
             "dataset": "ffpp", "group": name, "split": "val"} for name in names]


def test_centre_crops_match_between_the_loader_and_predict(trained_run):
    predictor = Predictor(trained_run, faces="none", progress=False)
    assert predictor.clip.crop == "face" and predictor.clip.resolved  # no boxes stored: the centre square
    loader_inputs = evaluation_inputs(trained_run.parent / "shards" / "val-*.tar", predictor.clip)
    metas = {meta["key"]: meta for batch in VideoLoader(trained_run.parent / "shards" / "val-*.tar", predictor.clip,
                                                        DataConfig(decoder="pyav", num_workers=0))
             for meta in batch["meta"]}
    assert len(loader_inputs) >= 4
    for key, expected in loader_inputs.items():
        got, clip = predictor_input(predictor, Path(metas[key]["root"]) / metas[key]["path"])
        assert not clip.face_crop and clip.indices.tolist() == metas[key]["frame_indices"]
        assert torch.equal(got, expected), key


def test_face_crops_from_the_same_boxes_match(trained_run, fixtures, tmp_path):
    """Shard-time MTCNN on the evaluation sampler's frames (--face-frames = the clip's frames) and predict's MTCNN
    on the same frames of the raw file find the same boxes: the crops, and the model input, are identical."""
    predictor = Predictor(trained_run, faces="mtcnn", progress=False)
    frames = predictor.clip.sampler.num_frames
    rows = real_rows(fixtures, ["183", "469"])
    write_shards(rows, tmp_path / "shards", face_detector="mtcnn", face_frames=frames, progress=False)
    loader_inputs = evaluation_inputs(tmp_path / "shards" / "val-*.tar", predictor.clip)
    assert sorted(loader_inputs) == ["ffpp_183", "ffpp_469"]
    for row in rows:
        got, clip = predictor_input(predictor, str(Path(row["root"]) / row["path"]))
        assert clip.face_crop and sum(1 for boxes in clip.meta["faces"]["boxes"] if boxes) >= frames - 1
        assert torch.equal(got, loader_inputs[row["key"]]), row["key"]
    # the stored boxes handed to predict directly give the same input too
    sample = first_sample(tmp_path / "shards" / "val-000000.tar")
    got, _ = predictor_input(predictor, sample["mp4"], sample["meta"])
    assert torch.equal(got, loader_inputs[sample["__key__"]])


def test_face_clip_shards_match(trained_run, tmp_path):
    predictor = Predictor(trained_run, faces="mtcnn", progress=False)
    rows = [{"key": "clip183", "path": SMALL_CLIP.name, "root": str(SMALL_CLIP.parent), "label": 1, "dataset": "ffpp",
             "group": "183", "split": "val"}]
    options = FaceClipOptions(size=64, tracks=TrackOptions(detect_every=32))
    write_shards(rows, tmp_path / "shards", progress=False, store="faces", face_clip_options=options)
    loader_inputs = evaluation_inputs(tmp_path / "shards" / "val-*.tar", predictor.clip)
    sample = first_sample(tmp_path / "shards" / "val-000000.tar")
    meta, field = video_member(sample)  # track 0's clip, and the meta of that track
    got, clip = predictor_input(predictor, sample[field], meta)
    assert clip.face_crop and "faces" not in clip.meta  # the clip is the face crop: nothing was detected again
    assert torch.equal(got, loader_inputs["clip183"])
