"""`dfdtrain model`: parameter counts, trainable parts, FLOPs and checkpoint bytes of real (small, untrained) timm
detectors, and the command's JSON checked against a model built here."""

import dataclasses
import json

import pytest

from support import REPO, run_cli
from dfdtrain.checks import load_experiment
from dfdtrain.config import FinetuneConfig
from dfdtrain.core.errors import DfdError
from dfdtrain.models.detector import build_detector, build_detector_from_config
from dfdtrain.models.finetune_methods import trained_phases
from dfdtrain.models.stats import clip_flops, count_parameters, forward_flops, state_bytes

DEMO = REPO / "configs" / "demo.yaml"


def numel(parameters):
    return sum(parameter.numel() for parameter in parameters)


def test_counts_of_a_cnn_with_a_gru_under_each_finetuning_method():
    model = build_detector("mobilenetv2_100", "gru", head_options={"hidden_size": 32})
    total, head = numel(model.parameters()), numel(model.head.parameters())
    full = trained_phases(model, FinetuneConfig())
    assert [epoch for epoch, _ in full] == [0] and numel(full[0][1]) == total
    counts = count_parameters(model, full[-1][1])
    assert counts["total"] == counts["trainable"] == total
    assert counts["groups"] == {"backbone": {"total": total - head, "trainable": total - head},
                                "head": {"total": head, "trainable": head}}

    frozen = trained_phases(model, FinetuneConfig(freeze_backbone=True))
    assert numel(frozen[-1][1]) == head and len(frozen) == 1
    assert count_parameters(model)["trainable"] == head  # requires_grad set as training sets it
    assert state_bytes(model, frozen[-1][1]) == 4 * head
    floats = [tensor for tensor in model.state_dict().values() if tensor.is_floating_point()]
    assert state_bytes(model) == 4 * numel(floats) > 4 * total  # BatchNorm running statistics count too

    two_phase = trained_phases(model, FinetuneConfig(frozen_epochs=2, unfreeze_last=1))
    assert [epoch for epoch, _ in two_phase] == [0, 2]
    assert numel(two_phase[0][1]) == head < numel(two_phase[1][1]) < total
    assert {id(p) for p in two_phase[1][1]} == {id(p) for p in model.parameters() if p.requires_grad}


def test_flops_are_positive_and_grow_with_the_frames():
    vit = build_detector("vit_tiny_patch16_224", "mean", image_size=64)
    frame, clip2 = forward_flops(vit, 64, 2)
    frame4, clip4 = forward_flops(vit, 64, 4)
    assert frame == frame4 > 0 and clip2 > 2 * frame  # T x one frame, + the head's (its dense layers, per frame)
    assert clip4 - clip2 == forward_flops(vit, 64, 6)[1] - clip4 > 2 * frame  # linear in T
    assert numel(vit.parameters()) == count_parameters(vit)["total"]

    cnn = build_detector("mobilenetv2_100", "gru", head_options={"hidden_size": 32})
    frame, clip = forward_flops(cnn, 64, 3)
    assert frame > 0 and clip > 3 * frame  # the GRU's matmuls are counted
    assert forward_flops(cnn, 96, 3)[0] > frame


def test_a_clip_the_model_cannot_take_is_a_dfd_error():
    config = load_experiment(DEMO, ["model.backbone=vit_tiny_patch16_224", "clip.image_size=64"])
    model = build_detector_from_config(config.model, config.clip)  # a ViT's position embeddings: built for 64 px
    other = dataclasses.replace(config.clip, image_size=32)
    with pytest.raises(DfdError, match=r"cannot take the config's clip \[1,4,3,32,32\]"):
        clip_flops(model, other.resolve(model.backbone_info.data_config))


def test_model_json_matches_a_model_built_from_the_same_config():
    overrides = ["model.pretrained=false", "finetune.freeze_backbone=true", "clip.sampler.num_frames=2"]
    result = run_cli("model", "--config", DEMO, *overrides, "--json")
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)

    config = load_experiment(DEMO, overrides)
    model = build_detector_from_config(config.model, config.clip)
    total, head = numel(model.parameters()), numel(model.head.parameters())
    assert shown["backbone"]["name"] == "mobilenetv3_small_100" and shown["head"] == "gru"
    assert shown["finetune"]["method"] == "frozen backbone"
    assert shown["params"]["total"] == total and shown["params"]["trainable"] == head
    assert shown["params"]["groups"]["head"] == {"total": head, "trainable": head}
    assert shown["params"]["groups"]["backbone"] == {"total": total - head, "trainable": 0}
    frame, clip = forward_flops(model, 128, 2)
    assert shown["flops"] == {"per_frame": frame, "per_clip_forward": clip, "per_clip_train": 3 * clip}
    assert shown["input"]["frames"] == 2 and shown["input"]["image_size"] == 128
    assert shown["input"]["crop"] == "center" and shown["input"]["channels"] == 3
    assert shown["input"]["mean"] == pytest.approx(list(model.backbone_info.data_config["mean"]))
    state = model.state_dict()
    assert shown["checkpoint_bytes"] == {
        "full": sum(t.numel() * t.element_size() for t in state.values() if t.is_floating_point()),
        "trainable": 4 * head}


def test_model_table_shows_both_phases_and_bad_input_is_one_line():
    result = run_cli("model", "--config", DEMO, "finetune.frozen_epochs=2", "clip.sampler.num_frames=2")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[2].split() == ["fine-tuning", "two-phase"]
    assert [line.split()[:3] for line in lines[3:5]] == [["from", "epoch", "1"], ["from", "epoch", "3"]]
    assert any(line.startswith("FLOPs per clip ") for line in lines)

    bad = run_cli("model", "--config", DEMO, "model.backbone=mvit_v2_s", "model.head=none", "model.head_options={}",
                  "clip.sampler.num_frames=8")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert bad.stderr.startswith("dfdtrain model: error: config key 'clip.sampler.num_frames' is 8; mvit_v2_s takes")
