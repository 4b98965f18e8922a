"""Experiment configuration: dataclasses with documented defaults, loaded from YAML, overridable.

    config = load_config("configs/demo.yaml", ["model.head=lstm", "data.num_frames=20"])

An override is ``section.key=value`` (``model.head_options.num_layers=2`` reaches into a dict); the value
is parsed as YAML (``true``, ``3``, ``1e-4``, ``[256, 128]``). An unknown key is an error naming it, so a typo
never silently trains the default. ``config_to_dict`` gives the resolved config to save beside a run.
"""

import dataclasses
import typing

import yaml

from dfdtrain.errors import DfdError


@dataclasses.dataclass
class DataConfig:
    source: str = "videos"  # videos (decode shards) | embeddings (cached frame features from `dfdtrain embed`)
    train_shards: str = ""  # glob or brace pattern, e.g. shards/train-*.tar
    val_shards: str = ""
    batch_size: int = 8  # per rank
    num_workers: int = 2
    num_frames: int = 16  # T: frames per clip (the notebooks used 16/20/32/64)
    sampler: str = "uniform"  # uniform | clip | every
    stride: int = 1  # clip sampler: step between frames
    every: int = 1  # every sampler: take every k-th frame
    image_size: int = 0  # 0 = the backbone's own input size (timm data config)
    crop: str = "face"  # face (stored boxes, else centre square) | center | full
    margin: float = 1 / 3  # face box growth per side
    decoder: str = "auto"  # auto | pyav | dali | torchcodec | sequential
    shuffle_buffer: int = 64
    epoch_samples: int = 0  # training samples per epoch over all ranks; 0 = all training samples
    class_balance: bool = False  # resample training data to equal real/fake counts
    augment: bool = True
    input_transform: str = "rgb"  # rgb | ela (error-level analysis)
    dali_canvas: int = 0  # DALI: decode-time square resize, needed for mixed resolutions
    face_track: str = "first"  # face-clip shards (shard --store faces): first | random track per training sample


@dataclasses.dataclass
class ModelConfig:
    backbone: str = "mobilenetv2_100"  # a timm name or a Keras-style alias (EfficientNetB7, ResNet152V2, ...)
    head: str = "gru"  # mean | max | attention | gru | lstm | transformer | dense | se
    head_options: dict = dataclasses.field(default_factory=dict)  # e.g. {num_layers: 2, hidden: [256, 128]}
    pretrained: bool = False  # timm's weights (needs the hub) ...
    pretrained_file: str = ""  # ... or a local weights file, for offline machines
    channels_last: bool = False
    grad_checkpointing: bool = False
    sync_batchnorm: bool = False  # convert BatchNorm to SyncBatchNorm for multi-GPU training
    drop_path_rate: float = 0.0


@dataclasses.dataclass
class FinetuneConfig:
    freeze_backbone: bool = False  # train the head only, for the whole run
    frozen_epochs: int = 0  # two-phase: this many epochs with the backbone frozen, then unfreeze
    unfreeze_last: int = -1  # stages to unfreeze after the frozen phase (-1 = all, timm's stage structure)
    backbone_lr_scale: float = 0.1  # backbone learning rate = head learning rate x this, once unfrozen
    freeze_batchnorm: bool = False  # keep BatchNorm running statistics of the backbone fixed


@dataclasses.dataclass
class OptimConfig:
    optimizer: str = "adamw"  # adamw | adam | sgd (Nesterov momentum)
    lr: float = 1e-3  # the head's peak learning rate (the backbone's: x finetune.backbone_lr_scale once unfrozen)
    weight_decay: float = 0.01  # not applied to biases and norm layers
    momentum: float = 0.9  # sgd
    schedule: str = "cosine"  # cosine | poly | constant, after warmup
    warmup_steps: int = 0  # linear warmup from 0 over this many optimizer steps
    min_lr_ratio: float = 0.0  # floor of the decay, as a fraction of the peak
    poly_power: float = 1.0


@dataclasses.dataclass
class TrainConfig:
    engine: str = "deepspeed"  # deepspeed | ddp
    epochs: int = 10
    zero_stage: int = 0  # DeepSpeed ZeRO stage 0, 1 or 2
    grad_accum: int = 1  # micro-batches per optimizer step
    grad_clip: float = 0.0  # max gradient norm; 0 = off
    precision: str = "fp32"  # fp32 | bf16 (torch autocast: BatchNorm and the master weights stay fp32)
    label_smoothing: float = 0.0
    class_weights: bool = False  # BCE pos_weight = real/fake count of the training shards
    threshold: float = 0.5  # P(fake) at or above which a video is called FAKE
    early_stopping_metric: str = "val_loss"  # val_loss or a metric path like video.head.auc
    early_stopping_mode: str = "min"  # min | max
    patience: int = 0  # epochs without improvement before stopping; 0 = never stop early
    checkpoint_every: int = 0  # optimizer steps between mid-epoch checkpoints; 0 = end of epoch only
    log_every: int = 10  # optimizer steps between train log lines
    deepspeed_config: str = ""  # a raw DeepSpeed JSON whose keys override the generated ones
    device: str = "auto"  # auto (cuda when available) | cpu | cuda


@dataclasses.dataclass
class WandbConfig:
    mode: str = "disabled"  # online | offline | disabled
    project: str = "dfdtrain"
    name: str = ""  # run name (default: the experiment name)
    tags: list = dataclasses.field(default_factory=list)
    group: str = ""


@dataclasses.dataclass
class LoggerConfig:
    wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)


@dataclasses.dataclass
class ExperimentConfig:
    name: str = "experiment"
    seed: int = 0
    run_dir: str = ""  # default runs/<name>
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    logger: LoggerConfig = dataclasses.field(default_factory=LoggerConfig)


def _build(cls, values, where):
    """A dataclass from a dict, recursively; unknown keys and wrong types are errors that name the key."""
    if not isinstance(values, dict):
        raise DfdError(f"{where or 'config'}: expected a mapping, got {type(values).__name__}")
    fields = {field.name: field for field in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        path = f"{where}.{key}" if where else key
        if key not in fields:
            raise DfdError(f"unknown config key {path!r} (known: {', '.join(sorted(fields))})")
        kind = hints[key]
        if dataclasses.is_dataclass(kind):
            kwargs[key] = _build(kind, value, path)
        else:
            kwargs[key] = _coerce(value, kind, path)
    return cls(**kwargs)


def _coerce(value, kind, path):
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if kind is bool and not isinstance(value, bool):
        raise DfdError(f"config key {path!r} must be true or false, not {value!r}")
    if kind in (int, float, str, dict, list) and not isinstance(value, kind):
        raise DfdError(f"config key {path!r} must be {kind.__name__}, not {value!r}")
    return value


def config_to_dict(config):
    return dataclasses.asdict(config)


def apply_override(values, override):
    """Apply one ``a.b.c=value`` to a nested dict (creating levels as needed)."""
    key, separator, text = override.partition("=")
    if not separator or not key.strip():
        raise DfdError(f"override {override!r}: expected key.sub=value")
    try:
        value = yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError as error:
        raise DfdError(f"override {override!r}: value is not valid YAML ({error.problem})") from None
    parts = key.strip().split(".")
    node = values
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise DfdError(f"override {override!r}: {part!r} is not a section")
    node[parts[-1]] = value


def config_from_dict(values):
    """ExperimentConfig from a (partial) nested dict, e.g. {"model": {...}}; unknown keys are errors."""
    return _build(ExperimentConfig, values, "")


def load_config(path=None, overrides=()):
    """ExperimentConfig from a YAML file (optional) plus ``key.sub=value`` overrides."""
    values = {}
    if path:
        try:
            with open(path) as handle:
                values = yaml.safe_load(handle) or {}
        except OSError as error:
            raise DfdError(f"{path}: cannot read config ({error.strerror})") from None
        except yaml.YAMLError as error:
            raise DfdError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    for override in overrides:
        apply_override(values, override)
    return config_from_dict(values)


def save_config(config, path):
    from dfdtrain.fileio import atomic_open

    with atomic_open(path, "w") as handle:
        yaml.safe_dump(config_to_dict(config), handle, sort_keys=False)
