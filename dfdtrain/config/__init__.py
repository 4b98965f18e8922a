"""Experiment configuration: one tree of dataclasses, checked when it is built, loaded from YAML, overridable.

    config = load_config("configs/demo.yaml", ["model.head=lstm", "clip.sampler.num_frames=20"])

Sections (each key below has its default, its type and, where it matters, its allowed values or range):
  clip      what the model sees (``ClipSpec``): frame sampler, crop, input size, normalisation, input
            transform. It is saved, resolved, in every checkpoint and bundle, so evaluate, predict and anything
            serving a detector later see a video exactly as training did.
  data      where clips come from: shards, batches, workers, decoder, balancing, the skip guard, augmentation.
  model     backbone (timm name or Keras alias) + temporal head and its options.
  finetune, optim, train, logger.

An override is ``section.key=value`` (``model.head_options.num_layers=2`` reaches into a dict); the value is
parsed as YAML (``true``, ``3``, ``1e-4``, ``[256, 128]``). ``config_to_dict`` gives the resolved config to
save beside a run.

Checked when a section is built, so a typo never reaches a worker process or a first forward pass: unknown keys
(with close names), types, allowed values (``Literal`` types, with the closest suggested), ranges (``Range``
in ``Annotated`` types), names that live in a registry (backbone, head and its options, decoder, engine) and
the cross-field rules of each section's ``check``. Every failure is a ``ConfigError``: one line naming the key.
A float key is a finite number: NaN and infinity (``nan``, ``.inf``, ``-inf``, as YAML or text) are refused
whatever its range says (NaN passes every comparison), unless its annotation carries ``AllowInfinite()``
(``Annotated[float, AllowInfinite()]``: +-infinity allowed, never NaN). No key takes it today.

The flat names of earlier versions (``data.num_frames``, ``data.crop``, ``data.augment: false``, ...) are
still read, as ``LEGACY_KEYS`` maps them.
"""

import copy
import dataclasses
import difflib
import functools
import math
import os
import types
import typing
from typing import Annotated, Literal, Optional

import yaml

from dfdtrain.core.errors import DfdError
from dfdtrain.core.fileio import read_yaml_mapping


class ConfigError(DfdError, ValueError):
    """A config value that cannot work: ``path`` is the key (``data.batch_size``), the message says why."""

    def __init__(self, path, problem):
        self.path, self.problem = path, problem
        super().__init__(f"config key {path!r} {problem}" if path else f"config {problem}")


# ---------------------------------------------------------------------------------------------- value checks
@dataclasses.dataclass(frozen=True)
class Range:
    """Allowed numeric range of a field, as ``Annotated[int, Range(1)]``; ``None`` leaves a side open."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_exclusive: bool = False

    def check(self, value, path):
        below = self.low is not None and (value <= self.low if self.low_exclusive else value < self.low)
        above = self.high is not None and value > self.high
        if below or above:
            raise ConfigError(path, f"must be {self.describe()}, not {value!r}")

    def describe(self):
        if self.low is not None and self.high is not None:
            return f"between {self.low:g} and {self.high:g}"
        return f"{'>' if self.low_exclusive else '>='} {self.low:g}" if self.low is not None else f"<= {self.high:g}"


@dataclasses.dataclass(frozen=True)
class AllowInfinite:
    """Marks a float field that may be +-infinity (``Annotated[float, AllowInfinite()]``), e.g. a limit where
    ``.inf`` means "none". Every other float field refuses infinity, and every float field refuses NaN."""


Count = Annotated[int, Range(1)]  # at least one
NonNegativeInt = Annotated[int, Range(0)]
NonNegative = Annotated[float, Range(0)]
Positive = Annotated[float, Range(0, low_exclusive=True)]
Fraction = Annotated[float, Range(0, 1)]


def _close_hint(value, choices):
    close = difflib.get_close_matches(str(value), [str(choice) for choice in choices], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_value(value, hint, path, allow_infinite=False):
    """``value`` as the annotation ``hint`` wants it (ints become floats where floats are wanted, lists become
    tuples), or a ConfigError naming ``path``. A float is finite unless ``allow_infinite`` (the field's
    ``AllowInfinite()``); NaN never passes."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *constraints = typing.get_args(hint)
        infinite = allow_infinite or any(isinstance(constraint, AllowInfinite) for constraint in constraints)
        value = check_value(value, base, path, infinite)
        for constraint in constraints:
            if isinstance(constraint, Range):
                constraint.check(value, path)
        return value
    if origin is Literal:
        choices = typing.get_args(hint)
        if not isinstance(value, bool) and value in choices:
            return value
        listed = ", ".join(str(choice) for choice in choices)
        raise ConfigError(path, f"must be one of {listed}, not {value!r}{_close_hint(value, choices)}")
    if origin in (typing.Union, types.UnionType):  # Optional[X]
        options = [option for option in typing.get_args(hint) if option is not type(None)]
        if value is None and len(options) < len(typing.get_args(hint)):
            return None
        return check_value(value, options[0], path, allow_infinite)
    if origin is tuple:
        kinds = typing.get_args(hint)
        if not isinstance(value, (list, tuple)) or len(value) != len(kinds):
            raise ConfigError(path, f"must be a list of {len(kinds)} values, not {value!r}")
        return tuple(check_value(item, kind, f"{path}[{position}]")
                     for position, (item, kind) in enumerate(zip(value, kinds)))
    if hint is float:
        if isinstance(value, str):  # YAML reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, int) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:
                raise ConfigError(path, f"must be a finite number, not an integer of {len(str(value))} digits") \
                    from None
        if not isinstance(value, float):
            raise ConfigError(path, f"must be a number, not {value!r}")
        if math.isnan(value) or (math.isinf(value) and not allow_infinite):
            raise ConfigError(path, f"must be a finite number, not {value!r}")
        return value
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"must be an integer, not {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"must be true or false, not {value!r}")
        return value
    if hint in (str, dict, list) and not isinstance(value, hint):
        raise ConfigError(path, f"must be a {hint.__name__}, not {value!r}")
    return value


@functools.cache
def _hints(cls):
    return typing.get_type_hints(cls, include_extras=True)


def choices(cls, name):
    """The allowed values of a ``Literal`` field, e.g. ``choices(ClipSpec, "crop")`` (for CLI flags)."""
    return typing.get_args(_hints(cls)[name])


class Section:
    """Base of every config dataclass: each field is checked against its annotation when an instance is built,
    then the section's own ``check`` runs (rules between its fields). ``SECTION`` is its key path, for messages."""

    SECTION = ""

    def key(self, name):
        return f"{self.SECTION}.{name}" if self.SECTION else name

    def __post_init__(self):
        hints = _hints(type(self))
        for field in dataclasses.fields(self):
            hint, value = hints[field.name], getattr(self, field.name)
            if dataclasses.is_dataclass(hint):
                if isinstance(value, dict):
                    value = build_section(hint, value, self.key(field.name))
                elif not isinstance(value, hint):
                    raise ConfigError(self.key(field.name), f"must be a mapping, not {value!r}")
            else:
                value = check_value(value, hint, self.key(field.name))
            setattr(self, field.name, value)
        self.check()

    def check(self):
        """Rules between this section's fields; raise ConfigError(self.key(name), problem)."""


def build_section(cls, values, path=None):
    """A Section from a (partial) dict, nested sections included; unknown keys are errors naming the key."""
    path = cls.SECTION if path is None else path
    if not isinstance(values, dict):
        raise ConfigError(path, f"must be a mapping, not {values!r}")
    names = [field.name for field in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            where = f"{path}.{key}" if path else str(key)
            raise DfdError(f"unknown config key {where!r}{_close_hint(key, names)} (known: {', '.join(names)})")
    kwargs = {}
    for key, value in values.items():
        hint = _hints(cls)[key]
        if dataclasses.is_dataclass(hint):
            value = build_section(hint, value, f"{path}.{key}" if path else key)
        kwargs[key] = value
    return cls(**kwargs)


def _registered(registry, name, path):
    """``name`` is in ``registry``, or a ConfigError naming ``path`` and the close names."""
    if name not in registry:
        raise ConfigError(path, f"names no {registry.family}: {registry.unknown_name_message(name)}")


# ---------------------------------------------------------------------------------------------- the clip
@dataclasses.dataclass
class SamplerConfig(Section):
    """Which frames of a video make a clip (dfdtrain.data.decode.sampler): ``uniform`` N frames over the whole video,
    ``clip`` N consecutive frames ``stride`` apart, ``every`` k-th frame; random jitter in training only."""

    SECTION = "clip.sampler"
    mode: Literal["uniform", "clip", "every"] = "uniform"
    num_frames: Count = 16  # T: frames per clip (the notebooks used 16/20/32/64); shorter videos are padded
    stride: Count = 1  # clip mode: step between frames
    every: Count = 1  # every mode: take every k-th frame


@dataclasses.dataclass
class ClipSpec(Section):
    """The clip a model sees: frames sampled, cropped, resized to ``image_size`` and normalised.

    ``image_size: 0`` and ``mean``/``std: null`` mean "the backbone's own" (timm's data config); ``resolve``
    fills them in once the model is built, and the resolved spec is what checkpoints and bundles store.
    """

    SECTION = "clip"
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    crop: Literal["face", "center", "full"] = "face"  # face: stored boxes or track (else centre square)
    margin: NonNegative = 1 / 3  # face box growth per side, as a fraction of its size
    image_size: NonNegativeInt = 0  # square input side; 0 = the backbone's own input size
    mean: Optional[tuple[float, float, float]] = None  # normalisation; null = the backbone's own
    std: Optional[tuple[Positive, Positive, Positive]] = None
    input_transform: Literal["rgb", "ela"] = "rgb"  # ela: error-level analysis |x - JPEG(x)|, as a reference report
    ela_quality: Annotated[int, Range(1, 100)] = 90
    ela_scale: Positive = 10.0

    def check(self):
        if (self.mean is None) != (self.std is None):
            raise ConfigError(self.key("mean"), "and clip.std are set together (or both left to the backbone)")

    @property
    def resolved(self):
        return self.image_size > 0 and self.mean is not None

    def resolve(self, data_config):
        """This spec with what it leaves to the backbone filled in from timm's ``data_config``."""
        return dataclasses.replace(
            self, image_size=self.image_size or int(data_config["input_size"][-1]),
            mean=self.mean if self.mean is not None else tuple(float(value) for value in data_config["mean"]),
            std=self.std if self.std is not None else tuple(float(value) for value in data_config["std"]))


# ---------------------------------------------------------------------------------------------- data
@dataclasses.dataclass
class AugmentConfig(Section):
    """Training augmentation (dfdtrain.data.loading.augment): one random draw per clip, applied to all its frames."""

    SECTION = "data.augment"
    enabled: bool = True
    hflip: Fraction = 0.5  # probability of a horizontal flip
    rotate: NonNegative = 10.0  # max degrees either way
    zoom: tuple[Positive, Positive] = (1.0, 1.15)  # scale range (>1 zooms in: a random resized crop)
    translate: Fraction = 0.05  # max shift as a fraction of the size
    brightness: Fraction = 0.2  # factor in [1 - b, 1 + b]
    contrast: Fraction = 0.2  # factor in [1 - c, 1 + c]
    jpeg: Fraction = 0.0  # probability of re-compressing the clip as JPEG
    jpeg_quality: tuple[Annotated[int, Range(1, 100)], Annotated[int, Range(1, 100)]] = (40, 95)
    blur: Fraction = 0.1  # probability of a Gaussian blur
    blur_sigma: tuple[Positive, Positive] = (0.3, 1.5)
    noise: Fraction = 0.1  # probability of Gaussian noise
    noise_std: tuple[NonNegative, NonNegative] = (0.005, 0.03)

    def check(self):
        for name in ("zoom", "jpeg_quality", "blur_sigma", "noise_std"):
            low, high = getattr(self, name)
            if low > high:
                raise ConfigError(self.key(name), f"must be [low, high] with low <= high, not {[low, high]}")


@dataclasses.dataclass
class DataConfig(Section):
    SECTION = "data"
    source: Literal["videos", "embeddings"] = "videos"  # embeddings: cached frame features from `dfdtrain embed`
    train_shards: str = ""  # glob or brace pattern, e.g. shards/train-*.tar
    val_shards: str = ""
    batch_size: Count = 8  # per rank
    num_workers: NonNegativeInt = 2  # decoding processes per rank
    worker_start_method: Literal["default", "fork", "spawn", "forkserver"] = "default"  # of the decoding workers
    decoder: str = "auto"  # a decoder name: auto | pyav | dali | torchcodec | sequential
    shuffle_buffer: Count = 64
    epoch_samples: NonNegativeInt = 0  # training samples per epoch over all ranks; 0 = all training samples
    class_balance: bool = False  # resample training data to equal real/fake counts
    dali_canvas: NonNegativeInt = 0  # DALI: decode-time square resize, needed for mixed resolutions
    # face-clip shards: which track a training sample uses: the best (track 0: the store ranks tracks on evidence,
    # best first) or any of them
    face_track: Literal["best", "random"] = "best"
    max_skip_fraction: Fraction = 0.5  # stop training when more of the last skip_window samples were skipped
    skip_window: Count = 64  # samples the skip guard looks back over
    verify_shards: bool = False  # check each shard's sha256 against index.json first (evaluate does by default)
    # DALI reads files: s3:// and http(s):// shards are copied into this local cache first (default
    # $DFDTRAIN_CACHE/shards or ~/.cache/dfdtrain/shards), which is kept under remote_cache_gb (the PyAV path streams)
    remote_cache_dir: str = ""
    remote_cache_gb: Positive = 50.0
    augment: AugmentConfig = dataclasses.field(default_factory=AugmentConfig)

    def check(self):
        from dfdtrain.data.decode.decoders import DECODERS

        _registered(DECODERS, self.decoder, self.key("decoder"))


# ---------------------------------------------------------------------------------------------- model
@dataclasses.dataclass
class ModelConfig(Section):
    SECTION = "model"
    # a timm name or a Keras-style alias (EfficientNetB7, ResNet152V2, ...), or a clip backbone: r3d_18, mc3_18,
    # r2plus1d_18, s3d, mvit_v2_s, swin3d_t, tall:<timm name> (dfdtrain.models.clip_backbones)
    backbone: str = "mobilenetv2_100"
    head: str = "gru"  # mean | max | attention | gru | lstm | transformer | dense | se; none with a clip backbone
    head_options: dict = dataclasses.field(default_factory=dict)  # e.g. {num_layers: 2, hidden: [256, 128]}
    backbone_options: dict = dataclasses.field(default_factory=dict)  # clip backbones: {dropout, tile_mask (tall)}
    pretrained: bool = False  # timm's weights (needs the hub) ...
    pretrained_file: str = ""  # ... or a local weights file, for offline machines
    channels_last: bool = False
    grad_checkpointing: bool = False
    sync_batchnorm: bool = False  # convert BatchNorm to SyncBatchNorm for multi-GPU training
    drop_path_rate: Annotated[float, Range(0, 1)] = 0.0

    def check(self):
        from dfdtrain.models.backbones import resolve_backbone_name
        from dfdtrain.models.clip_backbones import CLIP_BACKBONES, TALL_PREFIX, check_clip_options, is_clip_backbone
        from dfdtrain.models.detector import check_backbone_and_head
        from dfdtrain.models.heads import HEADS, check_head_options

        if self.backbone.startswith(TALL_PREFIX) or not is_clip_backbone(self.backbone):
            try:
                resolve_backbone_name(self.backbone.removeprefix(TALL_PREFIX))  # TALL's image model
            except DfdError as error:
                clips = difflib.get_close_matches(self.backbone, CLIP_BACKBONES.names(), n=2)
                hint = f" (clip backbones: {', '.join(clips)}?)" if clips else ""
                raise ConfigError(self.key("backbone"), f"names no usable backbone: {error}{hint}") from None
        problem = check_backbone_and_head(self.backbone, self.head)
        if problem:
            raise ConfigError(self.key("head"), problem)
        if is_clip_backbone(self.backbone):
            if self.head_options:
                raise ConfigError(self.key("head_options"), "is for temporal heads; a clip backbone's options go "
                                  "in model.backbone_options")
            problem = check_clip_options(self.backbone, self.backbone_options)
            if problem:
                raise ConfigError(self.key(f"backbone_options.{problem[0]}"), problem[1])
            return
        if self.backbone_options:
            raise ConfigError(self.key("backbone_options"), f"is for clip backbones; {self.backbone} is an image "
                              "backbone")
        _registered(HEADS, self.head, self.key("head"))
        problem = check_head_options(self.head, self.head_options)
        if problem:
            option, text = problem
            raise ConfigError(self.key(f"head_options.{option}") if option else self.key("head_options"), text)


@dataclasses.dataclass
class FinetuneConfig(Section):
    SECTION = "finetune"
    freeze_backbone: bool = False  # train the head only, for the whole run
    frozen_epochs: NonNegativeInt = 0  # two-phase: this many epochs with the backbone frozen, then unfreeze
    unfreeze_last: Annotated[int, Range(-1)] = -1  # stages to unfreeze after the frozen phase (-1 = all)
    backbone_lr_scale: NonNegative = 0.1  # backbone learning rate = head learning rate x this, once unfrozen
    freeze_batchnorm: bool = False  # keep BatchNorm running statistics of the backbone fixed


@dataclasses.dataclass
class OptimConfig(Section):
    SECTION = "optim"
    optimizer: Literal["adamw", "adam", "sgd"] = "adamw"  # sgd: Nesterov momentum
    lr: Positive = 1e-3  # the head's peak learning rate (the backbone's: x finetune.backbone_lr_scale)
    weight_decay: NonNegative = 0.01  # not applied to biases and norm layers
    momentum: Annotated[float, Range(0, 1)] = 0.9  # sgd
    schedule: Literal["cosine", "poly", "constant"] = "cosine"  # after warmup
    warmup_steps: NonNegativeInt = 0  # linear warmup from 0 over this many optimizer steps
    min_lr_ratio: Fraction = 0.0  # floor of the decay, as a fraction of the peak
    poly_power: Positive = 1.0


# Metrics where a lower value is better; every other metric of the validation table is higher-is-better.
LOWER_IS_BETTER = ("loss", "log_loss", "eer", "ece")


@dataclasses.dataclass
class TrainConfig(Section):
    SECTION = "train"
    engine: str = "deepspeed"  # deepspeed | ddp
    epochs: Count = 10
    zero_stage: Literal[0, 1, 2] = 0  # DeepSpeed ZeRO stage
    grad_accum: Count = 1  # micro-batches per optimizer step
    grad_clip: NonNegative = 0.0  # max gradient norm; 0 = off
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: torch autocast (BatchNorm and master weights stay fp32)
    label_smoothing: Annotated[float, Range(0, 1)] = 0.0
    class_weights: bool = False  # BCE pos_weight = real/fake count of the training shards
    threshold: Fraction = 0.5  # P(fake) at or above which a video is called FAKE (threshold_rule fixed)
    # at every checkpoint, fitted on that epoch's validation videos and stored in its detector.json:
    calibrate: bool = True  # temperature scaling of the video logit by validation NLL
    threshold_rule: Literal["fixed", "eer", "max_f1"] = "fixed"  # fixed: `threshold`; eer / max_f1: chosen there
    early_stopping_metric: str = "val_loss"  # val_loss or a metric path like video.head.auc
    early_stopping_mode: Literal["min", "max"] = "min"
    patience: NonNegativeInt = 0  # epochs without improvement before stopping; 0 = never stop early
    checkpoint_every: NonNegativeInt = 0  # optimizer steps between mid-epoch checkpoints; 0 = end of epoch only
    log_every: Count = 10  # optimizer steps between train log lines (and finiteness checks)
    deepspeed_config: str = ""  # a raw DeepSpeed JSON whose keys override the generated ones
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available

    def check(self):
        from dfdtrain.training.engines import ENGINES
        from dfdtrain.evaluation.scoring import check_metric_path

        _registered(ENGINES, self.engine, self.key("engine"))
        problem = check_metric_path(self.early_stopping_metric)
        if problem:
            raise ConfigError(self.key("early_stopping_metric"), problem)
        lower_is_better = self.early_stopping_metric.split(".")[-1] in LOWER_IS_BETTER \
            or self.early_stopping_metric == "val_loss"
        wanted = "min" if lower_is_better else "max"
        if self.early_stopping_mode != wanted:
            raise ConfigError(self.key("early_stopping_mode"),
                              f"is {self.early_stopping_mode!r}, which would keep the worst "
                              f"{self.early_stopping_metric}; set {wanted!r}")


# ---------------------------------------------------------------------------------------------- logging
@dataclasses.dataclass
class WandbConfig(Section):
    SECTION = "logger.wandb"
    mode: Literal["online", "offline", "disabled"] = "disabled"  # WANDB_MODE, when set, decides (wandb_mode)
    project: str = "dfdtrain"
    name: str = ""  # run name (default: the experiment name)
    tags: list = dataclasses.field(default_factory=list)
    group: str = ""


@dataclasses.dataclass
class LoggerConfig(Section):
    SECTION = "logger"
    wandb: WandbConfig = dataclasses.field(default_factory=WandbConfig)


WANDB_MODE_NAMES = {"online": "online", "offline": "offline", "disabled": "disabled",
                    "dryrun": "offline", "run": "online"}  # the last two: wandb's older names, which it still reads


def wandb_mode(configured):
    """The W&B mode a run uses: ``WANDB_MODE`` when it is set (online, offline or disabled), as W&B users expect
    of any tool (``WANDB_MODE=offline dfdtrain train ...``), else ``configured`` (``logger.wandb.mode``)."""
    value = os.environ.get("WANDB_MODE", "")
    if not value.strip():
        return configured
    mode = WANDB_MODE_NAMES.get(value.strip().lower())
    if mode is None:
        raise DfdError(f"WANDB_MODE={value!r}: expected online, offline or disabled (it overrides "
                       "logger.wandb.mode; unset it to use the config's)")
    return mode


# ---------------------------------------------------------------------------------------------- experiment
@dataclasses.dataclass
class ExperimentConfig(Section):
    name: str = "experiment"
    seed: int = 0
    run_dir: str = ""  # default runs/<name>
    clip: ClipSpec = dataclasses.field(default_factory=ClipSpec)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    logger: LoggerConfig = dataclasses.field(default_factory=LoggerConfig)

    def check(self):
        """Rules between sections. The world size is the launcher's (WORLD_SIZE), 1 without one."""
        data, world_size = self.data, int(os.environ.get("WORLD_SIZE", "1") or 1)
        if data.epoch_samples and data.epoch_samples < data.batch_size * world_size:
            raise ConfigError("data.epoch_samples", f"is {data.epoch_samples}, less than one global batch "
                              f"(data.batch_size {data.batch_size} x {world_size} process(es)): an epoch would "
                              "have no step")
        from dfdtrain.models.clip_backbones import check_clip, is_clip_backbone

        if is_clip_backbone(self.model.backbone):
            problem = check_clip(self.model.backbone, self.clip.sampler.num_frames, self.clip.image_size)
            if problem:
                raise ConfigError(*problem)
            if data.source == "embeddings":
                raise ConfigError("data.source", f"is embeddings (cached per-frame features), but the clip backbone "
                                  f"{self.model.backbone} sees whole clips: train it on video shards")
        if data.class_balance and self.train.class_weights:
            raise ConfigError("data.class_balance", "and train.class_weights both correct the class imbalance: "
                              "together they correct it twice; keep one")


# ---------------------------------------------------------------------------------------------- loading
# Flat names of earlier versions -> where they live now (read with a note in any error about them).
LEGACY_KEYS = {
    "data.num_frames": "clip.sampler.num_frames",
    "data.sampler": "clip.sampler.mode",
    "data.stride": "clip.sampler.stride",
    "data.every": "clip.sampler.every",
    "data.image_size": "clip.image_size",
    "data.crop": "clip.crop",
    "data.margin": "clip.margin",
    "data.input_transform": "clip.input_transform",
}


def _set_path(values, path, value):
    parts = path.split(".")
    node = values
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(path, f"cannot be set: {part!r} is not a section")
    node[parts[-1]] = value


def move_legacy_keys(values, moved):
    """Move earlier flat keys of ``values`` (a raw config dict) to their place; ``moved[new] = old``."""
    data = values.get("data")
    if not isinstance(data, dict):
        return
    for old, new in LEGACY_KEYS.items():
        name = old.split(".", 1)[1]
        if name in data:
            _set_path(values, new, data.pop(name))
            moved[new] = old
    if data.get("face_track") == "first":  # track 0 was "first"; the store now ranks it best on evidence
        data["face_track"] = "best"
    if isinstance(data.get("augment"), bool):  # `augment: false` was a switch; now a section
        data["augment"] = {"enabled": data["augment"]}
        moved["data.augment.enabled"] = "data.augment"


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


def config_from_dict(values, moved=None):
    """ExperimentConfig from a (partial) nested dict, e.g. {"model": {...}}; checked as it is built."""
    moved = {} if moved is None else moved
    move_legacy_keys(values, moved)
    try:
        return build_section(ExperimentConfig, values, "")
    except ConfigError as error:
        if error.path in moved:  # the user wrote the earlier name: say so
            raise ConfigError(error.path, f"{error.problem} (set as {moved[error.path]})") from None
        raise


def load_config(path=None, overrides=()):
    """ExperimentConfig from a YAML file (optional) plus ``key.sub=value`` overrides."""
    values = read_yaml_mapping(path, "config") if path else {}
    moved = {}
    move_legacy_keys(values, moved)
    for override in overrides:
        apply_override(values, override)
        move_legacy_keys(values, moved)  # an override may use an earlier name too; the later setting wins
    return config_from_dict(values, moved)


def resolved_run_config(config, run_dir):
    """``config`` as a run records it (its ``config.yaml``, the W&B run's config) and uses it: ``run_dir`` the
    absolute folder the run writes (``runs/<name>`` when the key is empty) and ``logger.wandb.mode`` after
    ``WANDB_MODE`` (``wandb_mode``)."""
    resolved = copy.deepcopy(config)
    resolved.run_dir = os.path.abspath(run_dir)
    resolved.logger.wandb.mode = wandb_mode(config.logger.wandb.mode)
    return resolved


def save_config(config, path):
    from dfdtrain.core.fileio import atomic_open

    with atomic_open(path, "w") as handle:
        yaml.safe_dump(config_to_dict(config), handle, sort_keys=False)
