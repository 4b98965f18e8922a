"""The config tree is checked when it is built: every typo or impossible value is one line naming the key;
earlier flat names still work (the `dfdtrain train` runs: system/test_config_cli.py)."""

import dataclasses
import json
import math
from typing import Annotated, Optional

import pytest

from dfdtrain.checks import load_experiment
from dfdtrain.config import (ClipSpec, ConfigError, DataConfig, ExperimentConfig, Range, SamplerConfig, Section,
                             config_to_dict, load_config, save_config)
from dfdtrain.core.errors import DfdError
from dfdtrain.models.bundle import read_settings
from dfdtrain.core.registry import Registry, UnknownName

# more of the same, checked in this process (the same load_experiment the command runs)
BAD_OVERRIDES = [
    (["model.head_options.num_layers=1.5"], "'model.head_options.num_layers' must be an integer >= 1, not 1.5"),
    (["model.head_options.layers=2"], "'model.head_options.layers' is not an option of the gru head"),
    (["model.head=transformer", "model.head_options={d_model: 30}"], "d_model (30) must be divisible by num_heads"),
    (["model.backbone=resnet5O"], "'model.backbone' names no usable backbone: unknown backbone 'resnet5O'"),
    (["train.early_stopping_metric=video.head.aucc"], "'aucc' is not in video.head (there: accuracy, ap, auc"),
    (["train.early_stopping_metric=video.head.auc"], "'train.early_stopping_mode' is 'min', which would keep the "
                                                     "worst video.head.auc; set 'max'"),
    (["data.augment.zoom=[1.2,1.0]"], "'data.augment.zoom' must be [low, high] with low <= high"),
    (["clip.sampler.mode=random"], "'clip.sampler.mode' must be one of uniform, clip, every, not 'random'"),
    (["data.epoch_samples=3"], "'data.epoch_samples' is 3, less than one global batch (data.batch_size 8"),
    (["data.class_balance=true", "train.class_weights=true"], "'data.class_balance' and train.class_weights both"),
    (["train.engine=horovod"], "'train.engine' names no engine: unknown engine 'horovod'"),
    (["train.zero_stage=3"], "'train.zero_stage' must be one of 0, 1, 2, not 3"),
    (["finetune.method=lorra"], "'finetune.method' must be one of full, layernorm, lora, svd_residual, adapter, "
                                "not 'lorra' (did you mean 'lora'?)"),
    (["finetune.method=lora", "finetune.freeze_backbone=true"], "'finetune.method' is 'lora', which chooses the "
     "trained tensors itself; finetune.freeze_backbone=true works with method 'full' only"),
    (["finetune.method=layernorm", "finetune.frozen_epochs=2"], "finetune.frozen_epochs=2 works with method 'full'"),
    (["finetune.lora_targets=[]"], "'finetune.lora_targets' must be a list of layer names, not []"),
    (["data.worker_start_method=thread"], "'data.worker_start_method' must be one of default, fork, spawn"),
    (["train.threshold=1.5"], "'train.threshold' must be between 0 and 1, not 1.5"),
    (["train.early_stopping_metric=synthetic.auc", "train.early_stopping_mode=max"],
     "'train.early_stopping_metric' is 'synthetic.auc', a metric of synthetic twins, which validation makes only "
     "with data.val_synthesis set"),
    (["data.val_synthesis=sbj"], "'data.val_synthesis' must be one of"),
    (["data.source=embeddings", "data.val_synthesis=vb"], "'data.val_synthesis' needs data.source=videos"),
    (["data.source=embeddings", "data.train_sources=[{shards: a.tar, synthesis: sbi}]"],
     "'data.train_sources[0].synthesis' needs data.source=videos"),
    (["clip.std=[0.2, 0.2]", "clip.mean=[0.5, 0.5, 0.5]"], "'clip.std' must be a list of 3 values"),
    # every float key refuses NaN and infinity, in any spelling YAML or text has for them
    (["optim.lr=.inf"], "'optim.lr' must be a finite number, not inf"),
    (["optim.lr=1e400"], "'optim.lr' must be a finite number, not inf"),
    (["optim.weight_decay=-.inf"], "'optim.weight_decay' must be a finite number, not -inf"),
    (["data.remote_cache_gb=Infinity"], "'data.remote_cache_gb' must be a finite number, not inf"),
    (["train.label_smoothing=.NaN"], "'train.label_smoothing' must be a finite number, not nan"),
    (["data.augment.zoom=[1.0, .inf]"], "'data.augment.zoom[1]' must be a finite number, not inf"),
    (["clip.mean=[0.5, nan, 0.5]", "clip.std=[0.2, 0.2, 0.2]"], "'clip.mean[1]' must be a finite number, not nan"),
    (["data.augment.perturb_types=[jpg]"], "'data.augment.perturb_types' must be one of saturation, contrast, block, "
                                           "noise, blur, jpeg, resize, not 'jpg' (did you mean 'jpeg'?)"),
    (["data.augment.perturb_types=[h264]"], "'data.augment.perturb_types' names h264: a re-encode is "
                                            "data.augment.codec's"),
    (["data.augment.codec_crf=[40, 23]"], "'data.augment.codec_crf' must be [low, high] with low <= high"),
    (["data.augment.codec_crf=[20, 52]"], "'data.augment.codec_crf[1]' must be between 0 and 51, not 52"),
    (["data.augment.perturb_levels=[0, 3]"], "'data.augment.perturb_levels[0]' must be between 1 and 5, not 0"),
    (["data.augment.codec=.nan"], "'data.augment.codec' must be a finite number, not nan"),
]


@pytest.mark.parametrize("overrides, expected", BAD_OVERRIDES, ids=[" ".join(item[0]) for item in BAD_OVERRIDES])
def test_more_bad_values_are_one_line_naming_the_key(overrides, expected):
    with pytest.raises(DfdError) as caught:
        load_experiment(None, overrides)
    assert expected in str(caught.value) and "\n" not in str(caught.value)


def test_sections_check_themselves_when_built_in_python_too():
    with pytest.raises(ConfigError, match="'data.batch_size' must be >= 1, not 0"):
        DataConfig(batch_size=0)
    with pytest.raises(ValueError, match="must be one of uniform, clip, every"):  # a ConfigError is a ValueError
        SamplerConfig(mode="random")
    with pytest.raises(ConfigError, match="'clip.mean' and clip.std are set together"):
        ClipSpec(mean=(0.5, 0.5, 0.5))
    with pytest.raises(ConfigError, match="'data.augment.hflip' must be between 0 and 1"):
        DataConfig(augment={"hflip": 2})
    assert DataConfig(augment={"zoom": [1, 2]}).augment.zoom == (1.0, 2.0)  # YAML lists become typed tuples


def test_a_float_key_takes_infinity_only_when_it_says_so_and_nan_never():
    """The one opt-out: ``AllowInfinite()`` in the annotation (no shipped key uses it); NaN is refused even then."""
    from dfdtrain.config import AllowInfinite

    @dataclasses.dataclass
    class Limits(Section):
        SECTION = "limits"
        bound: Annotated[float, Range(0), AllowInfinite()] = 1.0
        optional_bound: Optional[Annotated[float, AllowInfinite()]] = None
        finite: Annotated[float, Range(0)] = 1.0

    assert Limits(bound="inf", optional_bound=float("-inf")).bound == math.inf
    with pytest.raises(ConfigError, match="'limits.bound' must be >= 0, not -inf"):  # the range still holds
        Limits(bound=float("-inf"))
    with pytest.raises(ConfigError, match="'limits.bound' must be a finite number, not nan"):
        Limits(bound=float("nan"))
    with pytest.raises(ConfigError, match="'limits.finite' must be a finite number, not inf"):
        Limits(finite=math.inf)
    with pytest.raises(ConfigError, match="'limits.finite' must be a finite number, not nan"):
        Limits(finite="nan")
    with pytest.raises(ConfigError, match="'clip.margin' must be a finite number, not an integer of 401 digits"):
        load_config(None, ["clip.margin=1" + "0" * 400])  # YAML reads it as an int too large for a float


def test_earlier_flat_names_are_read_into_their_new_places(tmp_path):
    old = tmp_path / "old.yaml"
    old.write_text("data:\n  num_frames: 20\n  sampler: every\n  every: 4\n  image_size: 96\n  crop: center\n"
                   "  margin: 0.25\n  input_transform: ela\n  augment: false\n")
    config = load_config(old, ["data.stride=2"])
    assert config.clip == ClipSpec(sampler=SamplerConfig("every", 20, 2, 4), crop="center", margin=0.25,
                                   image_size=96, input_transform="ela")
    assert config.data.augment.enabled is False
    # an override in the new name wins over the file's old name, and the other way round
    assert load_config(old, ["clip.sampler.num_frames=8"]).clip.sampler.num_frames == 8
    assert load_config(None, ["clip.sampler.num_frames=8", "data.num_frames=12"]).clip.sampler.num_frames == 12


def test_saved_config_loads_back_to_the_same_tree(tmp_path):
    config = load_config(None, ["clip.sampler.num_frames=8", "clip.mean=[0.5, 0.5, 0.5]", "clip.std=[0.5, 0.5, 0.5]",
                                "data.augment.jpeg=0.3", "model.head=lstm", "model.head_options={num_layers: 2}",
                                "train.early_stopping_metric=video.head.auc", "train.early_stopping_mode=max"])
    save_config(config, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == config and config_to_dict(again) == config_to_dict(config)
    assert isinstance(again, ExperimentConfig) and again.clip.mean == (0.5, 0.5, 0.5)


def test_unknown_keys_and_registry_names_are_one_line_with_close_names():
    with pytest.raises(DfdError, match=r"unknown config key 'clip.samplr' \(did you mean 'sampler'\?\)"):
        load_config(None, ["clip.samplr.num_frames=3"])
    registry = Registry("colour")
    registry.register("red")(object)
    with pytest.raises(UnknownName) as caught:
        registry.get("rde")
    assert isinstance(caught.value, KeyError) and isinstance(caught.value, DfdError)
    assert str(caught.value) == "unknown colour 'rde'; did you mean red? (known: red)"


def test_detector_settings_of_the_first_version_still_load(tmp_path):
    """detector.json of bundles exported before the clip spec: flat sampler/crop/normalisation keys."""
    (tmp_path / "detector.json").write_text(json.dumps({
        "name": "old", "model": {"backbone": "mobilenetv2_050", "head": "gru", "head_options": {"hidden_size": 16}},
        "sampler": "clip", "num_frames": 6, "stride": 2, "every": 1, "image_size": 48, "crop": "center",
        "margin": 0.3, "input_transform": "rgb", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
        "threshold": 0.7}))
    settings = read_settings(tmp_path / "detector.json")
    assert settings.clip == ClipSpec(sampler=SamplerConfig("clip", 6, 2), crop="center", margin=0.3, image_size=48,
                                     mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert settings.threshold == 0.7 and settings.model.head_options == {"hidden_size": 16}
    (tmp_path / "detector.json").write_text(json.dumps({"format": "dfdtrain-detector/2", "clip": {"crop": "x"}}))
    with pytest.raises(DfdError, match="detector.json: config key 'clip.crop' must be one of"):
        read_settings(tmp_path / "detector.json")
