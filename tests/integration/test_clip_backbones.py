"""Clip backbones (torchvision video models and TALL): built, masked, fine-tuned, refused when misconfigured,
and trained for real with 2-process DeepSpeed on face-clip shards of the real fixtures, then used by predict,
evaluate and export like any detector."""

import json
import math
from pathlib import Path

import pytest
import torch
from einops import rearrange
from torch import nn

from support import run_cli, torchrun
from dfdtrain.checks import load_experiment
from dfdtrain.config import ConfigError
from dfdtrain.core.errors import DfdError
from dfdtrain.models import ClipDetector, build_detector
from dfdtrain.models.backbones import backbone_stages
from dfdtrain.models.clip_backbones import ThumbnailBackbone, thumbnail_layout
from dfdtrain.models.finetune import FinetuneSchedule, parameter_groups, prepare_trainable
from dfdtrain.models.heads import SCORE_KINDS

TALL_SWIN = "tall:swin_tiny_patch4_window7_224"
# name -> (frames, image size (None: the model's own), batch): small clips, except what a model fixes
CASES = {"r3d_18": (4, 32, 2), "mc3_18": (4, 32, 2), "r2plus1d_18": (4, 32, 2), "s3d": (6, 32, 2),
         "swin3d_t": (4, 32, 2), "mvit_v2_s": (16, 224, 1), TALL_SWIN: (4, None, 2), "tall:resnet18": (5, 32, 2)}


@pytest.mark.parametrize("name", CASES)
def test_every_clip_backbone_trains_on_a_masked_clip_and_ignores_what_padding_holds(name):
    frames, size, batch = CASES[name]
    torch.manual_seed(0)
    model = build_detector(name, "none", num_frames=frames, image_size=size)
    assert isinstance(model, ClipDetector) and model.backbone_info.kind == "clip"
    assert model.backbone_info.score_kind in SCORE_KINDS
    size = model.backbone_info.data_config["input_size"][-1]
    clips = torch.randn(batch, frames, 3, size, size)
    mask = torch.ones(batch, frames, dtype=torch.bool)
    mask[-1, frames - 2:] = False  # the last clip is 2 frames short

    video_logits, frame_logits = model.train()(clips, mask)
    assert video_logits.shape == (batch,) and frame_logits.shape == (batch, frames)
    assert torch.isfinite(video_logits).all() and (frame_logits[~mask] == 0).all()
    (video_logits.sum() + frame_logits.sum()).backward()
    no_gradient = [key for key, parameter in model.named_parameters() if parameter.grad is None]
    assert not no_gradient, no_gradient[:3]
    assert model.head[-1].weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        expected = model(clips, mask)
        other_padding = clips.clone()
        other_padding[~mask] = 100 * torch.randn_like(other_padding[~mask])
        got = model(other_padding, mask)
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])
    if model.backbone_info.score_kind == "clip":  # one score for the clip, at every real frame
        assert torch.allclose(expected[1][mask], expected[0].unsqueeze(1).expand(batch, frames)[mask])


def test_tall_puts_frame_t_in_the_papers_tile():
    clip = torch.arange(4, dtype=torch.float32).view(1, 4, 1, 1, 1).expand(1, 4, 3, 2, 2)  # frame t is all t
    thumbnail = thumbnail_layout(clip, grid=2)
    assert thumbnail.shape == (1, 3, 4, 4)
    tiles = thumbnail[0, 0, ::2, ::2]  # one pixel per tile
    assert tiles.tolist() == [[0, 1], [2, 3]]  # row by row: frame t at row t // 2, column t % 2
    # the official code's layout: frames stacked on channels, then 'b (th tw c) h w -> b c (th h) (tw w)'
    paper = rearrange(clip.reshape(1, 12, 2, 2), "b (th tw c) h w -> b c (th h) (tw w)", th=2, c=3)
    assert torch.equal(thumbnail, paper)

    five = thumbnail_layout(torch.arange(1, 6, dtype=torch.float32).view(1, 5, 1, 1, 1).expand(1, 5, 3, 2, 2), 3)
    assert five[0, 0, ::2, ::2].tolist() == [[1, 2, 3], [4, 5, 0], [0, 0, 0]]  # 3 x 3, unused tiles 0


class Thumbnails(nn.Module):
    """An image model that keeps what it was given (to look at TALL's input) and pools it."""

    def forward(self, images):
        self.seen = images
        return images.mean(dim=(2, 3))


def test_tall_masks_the_same_square_of_every_tile_in_training_only():
    torch.manual_seed(0)
    backbone = ThumbnailBackbone(Thumbnails(), num_frames=4, tile_mask=5)
    clip = torch.ones(3, 4, 3, 16, 16)
    backbone.train()(clip)
    for sample in backbone.image_model.seen:
        holes = (sample[0] == 0).float()
        tiles = [holes[row:row + 16, column:column + 16] for row in (0, 16) for column in (0, 16)]
        assert tiles[0].sum() == 25 and all(torch.equal(tile, tiles[0]) for tile in tiles)
    backbone.eval()(clip)
    assert (backbone.image_model.seen != 0).all()


def test_fine_tuning_policies_reach_clip_backbones():
    model = build_detector("r2plus1d_18", "none", num_frames=4, image_size=32)
    stages = backbone_stages(model.backbone)
    assert [stage[0].split(".")[1] for stage in stages] == ["stem", "layer1", "layer2", "layer3", "layer4"]
    prepare_trainable(model, FinetuneSchedule(unfreeze_last=2))
    trainable = {name.split(".")[1] for name, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == {"layer3", "layer4"}
    assert all(parameter.requires_grad for parameter in model.head.parameters())
    assert {group["name"] for group in parameter_groups(model, 1e-3)} >= {"backbone", "head"}

    prepare_trainable(model, FinetuneSchedule(freeze_backbone=True))
    assert not any(parameter.requires_grad for parameter in model.backbone.parameters())

    tall = build_detector("tall:resnet18", "none", num_frames=4, image_size=32)
    prepare_trainable(tall, FinetuneSchedule(unfreeze_last=1))
    trainable = [name for name, p in tall.backbone.named_parameters() if p.requires_grad]
    assert trainable and all(name.startswith("image_model.layer4.") for name in trainable)  # timm's last stage


@pytest.mark.parametrize("overrides, key, words", [
    (["model.backbone=r3d_18", "model.head=lstm"], "model.head", "cannot follow the clip backbone r3d_18"),
    (["model.backbone=resnet18", "model.head=none"], "model.head", "needs a clip backbone"),
    (["model.backbone=mvit_v2_s", "model.head=none", "clip.sampler.num_frames=8"], "clip.sampler.num_frames",
     "exactly 16 frames"),
    (["model.backbone=s3d", "model.head=none", "clip.image_size=16"], "clip.image_size", "at least 32 px"),
    (["model.backbone=r3d_18", "model.head=none", "model.head_options={hidden_size: 8}"], "model.head_options",
     "backbone_options"),
    (["model.backbone=r3d_18", "model.head=none", "model.backbone_options={tile_mask: 16}"],
     "model.backbone_options.tile_mask", "not an option"),
    (["model.backbone=resnet18", "model.backbone_options={dropout: 0.1}"], "model.backbone_options",
     "image backbone"),
    (["model.backbone=r3d_18", "model.head=none", "data.source=embeddings"], "data.source", "whole clips"),
    (["model.backbone=tall:resnet_nope", "model.head=none"], "model.backbone", "unknown backbone"),
])
def test_config_refuses_what_a_clip_backbone_cannot_do(overrides, key, words):
    with pytest.raises(ConfigError) as error:
        load_experiment(None, overrides)
    assert error.value.path == key and words in str(error.value) and "\n" not in str(error.value)


def test_pretrained_weights_come_from_a_file_and_never_silently_from_nowhere(tmp_path):
    from torchvision.models.video import mc3_18, r3d_18

    with pytest.raises(DfdError, match=r"mc3_18-a90a0ba3\.pth.*pretrained_file"):
        build_detector("mc3_18", "none", pretrained=True)
    published = mc3_18()  # stands in for torchvision's download: the same keys, classifier included
    torch.save(published.state_dict(), tmp_path / "mc3_18.pth")
    model = build_detector("mc3_18", "none", pretrained_file=tmp_path / "mc3_18.pth", num_frames=4)
    assert model.backbone_info.pretrained.startswith("file:")
    assert torch.equal(model.backbone.model.layer4[1].conv2[0].weight, published.layer4[1].conv2[0].weight)
    torch.save(r3d_18().state_dict(), tmp_path / "r3d_18.pth")
    with pytest.raises(DfdError, match="does not fit mc3_18"):
        build_detector("mc3_18", "none", pretrained_file=tmp_path / "r3d_18.pth")
    with pytest.raises(DfdError, match="does not exist"):
        build_detector("mc3_18", "none", pretrained_file=tmp_path / "missing.pth")


@pytest.fixture(scope="module")
def face_clip_shards(tmp_path_factory, fixtures):
    """Face-clip shards (MTCNN tracks, 64-px H.264 clips) of real FF++ videos: a real and a fake per split."""
    from dfdtrain.data.faces.clip_options import FaceClipOptions
    from dfdtrain.data.shards.writer import write_shards
    from dfdtrain.data.faces.tracks import TrackOptions

    ffpp = "ffpp/{}/c40/videos/{}.mp4"
    videos = [("real469", "original_sequences/youtube", "469", 0, "train"),
              ("fake469", "manipulated_sequences/Deepfakes", "469_481", 1, "train"),
              ("real585", "original_sequences/youtube", "585", 0, "val"),
              ("fake585", "manipulated_sequences/Deepfakes", "585_599", 1, "val")]
    rows = [{"key": key, "path": ffpp.format(folder, name), "root": str(fixtures), "label": label, "dataset": "ffpp",
             "group": key[-3:], "split": split} for key, folder, name, label, split in videos]
    root = tmp_path_factory.mktemp("clip_backbone")
    options = FaceClipOptions(size=64, tracks=TrackOptions(detect_every=16))
    write_shards(rows, root / "shards", progress=False, store="faces", face_clip_options=options)
    return root / "shards"


def test_deepspeed_trains_a_clip_backbone_on_face_clips_that_then_predicts_evaluates_and_exports(
        face_clip_shards, fixtures, tmp_path):
    run_dir = tmp_path / "run"
    result = torchrun(2, "-m", "dfdtrain", "train", "--quiet", f"run_dir={run_dir}", "train.engine=deepspeed",
                      f"data.train_shards={face_clip_shards}/train-*.tar",
                      f"data.val_shards={face_clip_shards}/val-*.tar", "model.backbone=r2plus1d_18", "model.head=none",
                      "clip.sampler.num_frames=8", "clip.image_size=64",
                      "data.decoder=pyav", "data.batch_size=1", "data.num_workers=0", "train.epochs=2",
                      "train.log_every=1", "optim.lr=0.001", port=29681)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["engine"] == "deepspeed" and report["world_size"] == 2
    assert report["steps"] == 2 and report["skipped"]["train"] == 0  # 2 training clips / (2 ranks x 1) x 2 epochs
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = [row["loss"] for row in rows if row["kind"] == "train"]
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    checkpoint = report["checkpoint"]
    assert (Path(checkpoint) / "mp_rank_00_model_states.pt").is_file()

    video = fixtures / "ffpp/manipulated_sequences/Deepfakes/c40/videos/183_253.mp4"
    predicted = run_cli("predict", "--checkpoint", checkpoint, "--json", video)
    assert predicted.returncode == 0, predicted.stderr[-2000:]
    [answer] = json.loads(predicted.stdout)
    assert 0 <= answer["p_fake"] <= 1 and len(answer["segment_scores"]) == 8

    evaluated = run_cli("evaluate", "--checkpoint", checkpoint, "--shards", f"{face_clip_shards}/val-*.tar",
                        "--out", tmp_path / "eval", "--workers", "0", "--bootstrap", "0")
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["labels"] == {"real": 1, "fake": 1} and metrics["position_scores"]["kind"] == "segment"

    exported = run_cli("export", "--checkpoint", checkpoint, "--out", tmp_path / "bundle", "--onnx")
    assert exported.returncode == 0, exported.stderr[-2000:]
    assert "max |onnxruntime - PyTorch|" in exported.stdout
    from_bundle = run_cli("predict", "--checkpoint", tmp_path / "bundle", "--json", video)
    assert json.loads(from_bundle.stdout)[0]["p_fake"] == pytest.approx(answer["p_fake"], abs=1e-6)

    embedded = run_cli("embed", "--config", run_dir / "config.yaml", "--shards", f"{face_clip_shards}/val-*.tar",
                       "--out", tmp_path / "embeddings")
    assert embedded.returncode != 0 and "clip backbone r2plus1d_18" in embedded.stderr
    assert len(embedded.stderr.strip().splitlines()) == 1
