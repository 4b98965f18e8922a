"""Detectors: every backbone alias with every head, freezing policies, configs and the embedding cache."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch

from support import REPO, make_synth_shards, run_cli
from dfdtrain.checks import load_experiment
from dfdtrain.config import load_config
from dfdtrain.data.loading.loader import VideoLoader
from dfdtrain.core.errors import DfdError
from dfdtrain.models.backbones import KERAS_ALIASES, build_backbone, resolve_backbone_name
from dfdtrain.models.clip_backbones import is_clip_backbone
from dfdtrain.models.detector import VideoDetector, build_detector, build_detector_from_config
from dfdtrain.training.embedding_shards import write_embeddings
from dfdtrain.training.optim import LearningRateSchedule, build_optimizer
from dfdtrain.config import OptimConfig
from dfdtrain.models.finetune import (FinetuneSchedule, apply_phase, freeze_batchnorm_statistics,
                                      parameter_groups, prepare_trainable, set_trainable_stages)
from dfdtrain.models.heads import HEADS, build_head

# the smallest input each family accepts (Inception-style stems need more than 64 px)
MIN_SIZE = {"InceptionV3": 96, "InceptionResNetV2": 96, "Xception": 72}


def masked_batch(size, frames=3):
    clips = torch.randn(2, frames, 3, size, size)
    mask = torch.tensor([[True] * frames, [True] * (frames - 1) + [False]])
    return clips, mask


@pytest.mark.parametrize("alias", sorted(KERAS_ALIASES))
def test_every_alias_with_every_head_forward_backward_on_a_masked_batch(alias):
    torch.manual_seed(0)
    backbone, info = build_backbone(alias, pretrained=False)
    size = MIN_SIZE.get(alias, 64)
    clips, mask = masked_batch(size)
    heads = HEADS.names()
    # end to end with one head (rotating over the aliases), gradients reach the backbone's first layer
    head_name = heads[sorted(KERAS_ALIASES).index(alias) % len(heads)]
    detector = VideoDetector(backbone, build_head(head_name, in_features=info.num_features), info)
    video_logits, frame_logits = detector(clips, mask)
    assert video_logits.shape == (2,) and frame_logits.shape == (2, 3)
    video_logits.sum().backward()
    first = next(parameter for parameter in backbone.parameters())
    assert first.grad is not None and torch.isfinite(first.grad).all() and first.grad.abs().sum() > 0
    # every head on this backbone's real (masked) features: forward + backward through features and head
    features = detector.frame_features(clips, mask).detach()
    assert torch.all(features[1, 2] == 0)  # the padded frame never went through the backbone
    for name in heads:
        head = build_head(name, in_features=info.num_features)
        leaf = features.clone().requires_grad_(True)
        video, frames = head(leaf, mask)
        assert video.shape == (2,) and frames.shape == (2, 3) and torch.isfinite(video).all(), name
        video.sum().backward()
        assert leaf.grad is not None and leaf.grad[:, :2].abs().sum() > 0, name


def small_detector(head="gru"):
    torch.manual_seed(0)
    return build_detector("mobilenetv2_050", head, head_options={"hidden": [16]} if head != "mean" else {})


def snapshot(module):
    return {name: parameter.detach().clone() for name, parameter in module.named_parameters()}


def train_step(detector, optimizer, size=32):
    clips, mask = masked_batch(size)
    detector.train()
    freeze_batchnorm_statistics(detector)
    optimizer.zero_grad()
    video, _ = detector(clips, mask)
    torch.nn.functional.binary_cross_entropy_with_logits(video, torch.tensor([0.0, 1.0])).backward()
    optimizer.step()


def test_frozen_backbone_gets_no_update_but_the_head_does():
    detector = small_detector()
    schedule = FinetuneSchedule(freeze_backbone=True, freeze_batchnorm=True)
    prepare_trainable(detector, schedule)
    optimizer = build_optimizer(parameter_groups(detector, head_lr=1e-2, weight_decay=0.05), OptimConfig(lr=1e-2))
    assert all(not group["name"].startswith("backbone") for group in optimizer.param_groups)  # not even listed
    before_backbone, before_head = snapshot(detector.backbone), snapshot(detector.head)
    stats_before = {name: buffer.clone() for name, buffer in detector.backbone.named_buffers()}
    train_step(detector, optimizer)
    after_backbone, after_head = snapshot(detector.backbone), snapshot(detector.head)
    assert all(torch.equal(before_backbone[name], after_backbone[name]) for name in before_backbone)
    assert all(torch.equal(stats_before[name], buffer) for name, buffer in detector.backbone.named_buffers())
    assert any(not torch.equal(before_head[name], after_head[name]) for name in before_head)


def test_unfreezing_the_last_stage_updates_only_that_stage():
    detector = small_detector()
    trainable = set_trainable_stages(detector, 1)
    optimizer = torch.optim.AdamW(parameter_groups(detector, head_lr=1e-2, weight_decay=0.05))
    before = snapshot(detector.backbone)
    train_step(detector, optimizer)
    after = snapshot(detector.backbone)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and changed <= trainable and len(trainable) < len(before)


def test_two_phase_schedule_switches_at_the_right_epoch_and_frozen_phase_holds_weights_at_lr_0():
    detector = small_detector()
    schedule = FinetuneSchedule(frozen_epochs=2, unfreeze_last=-1, backbone_lr_scale=0.1)
    prepare_trainable(detector, schedule)
    assert all(parameter.requires_grad for parameter in detector.parameters())  # trainable later: kept listed
    optimizer = build_optimizer(parameter_groups(detector, head_lr=1e-3, weight_decay=0.05), OptimConfig(lr=1e-3))
    lr_schedule = LearningRateSchedule(optimizer, OptimConfig(lr=1e-3, schedule="constant"), total_steps=10)
    seen = []
    for epoch in range(4):
        phase = apply_phase(detector, schedule, epoch, optimizer)
        lr_schedule.apply()
        backbone_lrs = {round(group["lr"], 12) for group in optimizer.param_groups if group["name"].startswith("backbone")}
        before = snapshot(detector.backbone)
        train_step(detector, optimizer)
        lr_schedule.step()
        moved = any(not torch.equal(before[name], value) for name, value in snapshot(detector.backbone).items())
        seen.append((phase.trainable_stages, backbone_lrs, moved))
    assert seen[0] == seen[1] == (0, {0.0}, False)  # AdamW with weight decay at lr 0: not a single bit moves
    assert seen[2] == seen[3] == (-1, {1e-4}, True)
    assert schedule.switches_at() == 2 and FinetuneSchedule(freeze_backbone=True).switches_at() is None


def test_learning_rate_schedules_warm_up_and_decay():
    model = torch.nn.Linear(2, 1)
    for schedule, end in (("cosine", 0.1), ("poly", 0.1), ("constant", 1.0)):
        optimizer = build_optimizer([{"params": list(model.parameters()), "name": "head", "lr": 1.0, "lr_scale": 1.0}],
                                    OptimConfig(lr=1.0, schedule=schedule, warmup_steps=4, min_lr_ratio=0.1))
        lrs = LearningRateSchedule(optimizer, OptimConfig(lr=1.0, schedule=schedule, warmup_steps=4,
                                                          min_lr_ratio=0.1), total_steps=20)
        seen = []
        for _ in range(21):
            seen.append(optimizer.param_groups[0]["lr"])
            lrs.step()
        assert seen[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0]) and seen[20] == pytest.approx(end)
        assert all(a >= b - 1e-12 for a, b in zip(seen[4:], seen[5:]))  # never increases after warmup


def test_every_recipe_in_configs_loads_and_names_real_components():
    recipes = sorted((REPO / "configs").glob("*.yaml"))
    assert len(recipes) >= 9
    for path in recipes:
        config = load_experiment(path)
        if is_clip_backbone(config.model.backbone):  # small enough to build (without downloading weights)
            model = build_detector_from_config(dataclasses.replace(config.model, pretrained=False), config.clip)
            assert model.backbone_info.data_config["input_size"][-1] == config.clip.image_size
            continue
        assert config.model.head in HEADS
        assert resolve_backbone_name(config.model.backbone)  # building every flagship here would be slow
        build_head(config.model.head, in_features=32, **config.model.head_options)


def test_config_overrides_and_errors(tmp_path):
    config = load_config(REPO / "configs/mobilenetv2_gru16.yaml",
                         ["model.head=lstm", "model.head_options.num_layers=3", "clip.sampler.num_frames=32",
                          "finetune.frozen_epochs=2", "clip.margin=0"])
    assert (config.model.head, config.model.head_options["num_layers"], config.clip.sampler.num_frames) == \
        ("lstm", 3, 32)
    assert config.finetune.frozen_epochs == 2 and config.clip.margin == 0.0
    with pytest.raises(DfdError, match="unknown config key 'model.bakcbone' \\(did you mean 'backbone'\\?\\)"):
        load_config(None, ["model.bakcbone=resnet50"])
    with pytest.raises(DfdError, match="clip.sampler.num_frames' must be an integer, not 'many'"):
        load_config(None, ["clip.sampler.num_frames=many"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(DfdError, match="not valid YAML"):
        load_config(bad)


@pytest.fixture(scope="module")
def video_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("embed")
    make_synth_shards(root, count=6, frames=10, val_fraction=0.34, target_bytes=100_000, seed=8)
    return root


def embed_config(*extra):
    return load_config(None, ["model.backbone=mobilenetv2_050", "model.head=gru",
                              "model.head_options={hidden: [16]}", "clip.sampler.num_frames=6", "clip.image_size=48",
                              "clip.crop=center", "data.decoder=pyav", "data.num_workers=0", "data.batch_size=4",
                              *extra])


@pytest.mark.parametrize("dtype, tolerance", [("float32", 1e-5), ("float16", 2e-2)])
def test_embedding_cache_round_trip_reproduces_the_live_head_output(video_shards, tmp_path, dtype, tolerance):
    config = embed_config()
    shards = [str(video_shards / "shards/train-*.tar"), str(video_shards / "shards/val-*.tar")]
    index = write_embeddings(config, shards, tmp_path / "emb", dtype=dtype, progress=False)
    assert index["totals"]["samples"] == 6 and {s["split"] for s in index["shards"]} == {"train", "val"}

    torch.manual_seed(config.seed)  # the same weights embed built
    model = build_detector_from_config(config.model).eval()
    clip = config.clip.resolve(model.backbone_info.data_config)
    live = {}
    with torch.inference_mode():
        for spec in shards:
            for batch in VideoLoader(spec, clip, config.data, train=False, rank=0, world_size=1):
                logits, _ = model(batch["frames"], batch["mask"])
                live.update(zip(batch["key"], logits.tolist()))
    cached = {}
    with torch.inference_mode():
        for split in ("train", "val"):
            loader = VideoLoader(tmp_path / f"emb/{split}-*.tar", None, dataclasses.replace(config.data,
                                 source="embeddings"), train=False, rank=0, world_size=1)
            for batch in loader:
                assert batch["features"].shape[1:] == (6, model.num_features)
                logits, _ = model.head(batch["features"], batch["mask"])
                cached.update(zip(batch["key"], logits.tolist()))
    assert sorted(cached) == sorted(live)
    for key in live:
        assert cached[key] == pytest.approx(live[key], abs=tolerance), key


def test_embed_cli_and_training_stream_from_embeddings(video_shards, tmp_path):
    out = tmp_path / "emb"
    result = run_cli("embed", "--shards", video_shards / "shards/train-*.tar", "--out", out, "--json", "--quiet",
                     "model.backbone=mobilenetv2_050", "clip.sampler.num_frames=4", "clip.image_size=32", "clip.crop=center",
                     "data.decoder=pyav", "data.num_workers=0")
    assert result.returncode == 0, result.stderr
    index = json.loads(result.stdout)
    assert index["backbone"] == "mobilenetv2_050" and index["dtype"] == "float16"
    meta = json.loads(Path(out / "index.json").read_text())
    config = embed_config("data.batch_size=2")
    loader = VideoLoader(out / "train-*.tar", None, dataclasses.replace(config.data, source="embeddings"),
                         train=True, rank=0, world_size=1)
    batches = list(loader)
    assert len(batches) == len(loader) == meta["totals"]["samples"] // 2
    assert batches[0]["features"].dtype == torch.float32 and batches[0]["features"].shape[1] == 4
    bad = run_cli("embed", "--shards", tmp_path / "none-*.tar", "--out", out, "model.backbone=mobilenetv2_050")
    assert bad.returncode == 2 and "no shard matches" in bad.stderr
