"""The experiment's config sections: one dataclass per section (``clip``, ``data``, ``model``, ``finetune``, ``optim``,
``train``, ``logger``) under ``ExperimentConfig``, each key with its default, its type and, where it matters, its
allowed values or range. Building one checks what a section can check alone (``dfdtrain.config.schema``: types,
choices, ranges, its own cross-field rules); the keys that name an entry of a registry of a higher layer
(decoder, backbone, head and its options, optimizer, schedule, engine, threshold rule, the early-stopping metric)
are checked against it by ``dfdtrain.checks.check_experiment``, when an experiment is loaded.
"""

import dataclasses
from typing import Annotated, Literal, Optional

from dfdtrain.config.schema import (ConfigError, Count, Fraction, NonNegative, NonNegativeInt, Positive, Range,
                                    Section, build_section, one_of)

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
# data.augment.perturb_types' choices: dfdtrain.data.perturb's frame-stage types (h264 works on a source file's
# bytes: training re-encodes with data.augment.codec instead). A lower layer cannot import that registry; a test
# (tests/integration/test_degrade_augment.py) keeps the two in step.
AUGMENT_PERTURBATIONS = ("saturation", "contrast", "block", "noise", "blur", "jpeg", "resize")


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
    # Degradation in the loader's workers, on the sampled decoded frames before the crop (dfdtrain.data.loading.
    # degrade.RandomDegradation; drawn with the worker's seeded generator, as the other augmentations):
    codec: Fraction = 0.0  # share of clips re-encoded with H.264 (libx264) at a random CRF
    # CRF drawn uniformly from [low, high]: 23 is x264's default (a careful upload), ~28-35 what social platforms
    # and FF++ c23..c40 span, 40 DeeperForensics' strongest VC level (beyond ~40 faces lose their structure)
    codec_crf: tuple[Annotated[int, Range(0, 51)], Annotated[int, Range(0, 51)]] = (23, 40)
    # scale drawn from [low, high] for a downscale before the encode, upscaled back after (a platform's rescale);
    # (1.0, 1.0): none
    codec_downscale: tuple[Annotated[float, Range(0, 1, low_exclusive=True)],
                           Annotated[float, Range(0, 1, low_exclusive=True)]] = (1.0, 1.0)
    perturb: Fraction = 0.0  # share of clips given one DeeperForensics perturbation (dfdtrain.data.perturb)
    perturb_types: list = dataclasses.field(default_factory=lambda: list(AUGMENT_PERTURBATIONS))  # drawn uniformly
    perturb_levels: tuple[Annotated[int, Range(1, 5)], Annotated[int, Range(1, 5)]] = (1, 5)  # drawn uniformly

    def check(self):
        for name in ("zoom", "jpeg_quality", "blur_sigma", "noise_std", "codec_crf", "codec_downscale",
                     "perturb_levels"):
            low, high = getattr(self, name)
            if low > high:
                raise ConfigError(self.key(name), f"must be [low, high] with low <= high, not {[low, high]}")
        for name in self.perturb_types:
            if name == "h264":
                raise ConfigError(self.key("perturb_types"), "names h264: a re-encode is data.augment.codec's "
                                  "(its share, codec_crf, codec_downscale); perturb_types takes "
                                  + ", ".join(AUGMENT_PERTURBATIONS))
            if name not in AUGMENT_PERTURBATIONS:
                raise ConfigError(self.key("perturb_types"), one_of(name, AUGMENT_PERTURBATIONS))
        if self.perturb > 0 and not self.perturb_types:
            raise ConfigError(self.key("perturb_types"), f"is empty while data.augment.perturb is "
                              f"{self.perturb:g}: name the types to draw from, or set perturb to 0")
        self.perturb_types = list(self.perturb_types)


SYNTHESES = ("", "sbi", "vb")  # a training source's synthesis: none, self-blended images, video-level blending


@dataclasses.dataclass
class TrainSourceConfig(Section):
    """One entry of ``data.train_sources``: a shard pattern drawn with a relative ``weight`` (normalised over the
    sources), its samples carrying ``synthesis`` (checked here; applied by the loader's synthesis stage)."""

    SECTION = "data.train_sources[]"
    shards: str = ""  # glob or brace pattern, local or s3:// / http(s):// as data.train_shards
    weight: Positive = 1.0  # relative: each source's share of the draws is weight / sum of the weights
    synthesis: str = ""

    def check(self):
        if not self.shards.strip():
            raise ConfigError(self.key("shards"), "is required: a shard pattern such as shards/train-*.tar")
        if self.synthesis not in SYNTHESES:
            raise ConfigError(self.key("synthesis"), f"must be '' (none), sbi or vb, not {self.synthesis!r}")


def _train_source(value, path):
    """A ``data.train_sources`` entry (a mapping, or a TrainSourceConfig already built) checked, as a section."""
    if isinstance(value, TrainSourceConfig):
        value = dataclasses.asdict(value)
    try:
        source = build_section(TrainSourceConfig, value, path)
    except ConfigError as error:  # the section's own checks name it data.train_sources[]: name the entry
        raise ConfigError(error.path.replace(TrainSourceConfig.SECTION, path), error.problem) from None
    source.SECTION = path  # names the entry in later messages
    return source


@dataclasses.dataclass
class DataConfig(Section):
    SECTION = "data"
    source: Literal["videos", "embeddings"] = "videos"  # embeddings: cached frame features from `dfdtrain embed`
    train_shards: str = ""  # glob or brace pattern, e.g. shards/train-*.tar
    # mixed training sets, instead of train_shards: [{shards, weight, synthesis}], drawn by weight
    # (dfdtrain.data.loading.sources)
    train_sources: list = dataclasses.field(default_factory=list)
    # a synthesis source (sbi, vb): the share of its real samples made fake, by their position in each loader
    # worker's stream of that source (the k-th real sample when floor(k x fraction) grows: exact to within one
    # sample over any run of the stream, not a coin per sample; dfdtrain.data.loading.synthetic)
    synthesis_fraction: Fraction = 0.5
    val_shards: str = ""
    # validation (and ``evaluate --synthesis``): a synthetic twin (sbi, vb) of every real video beside it, scored
    # and reported apart (metrics' ``synthetic``: the reals against their twins), as SBI validates on reals alone
    val_synthesis: Literal["", "sbi", "vb"] = ""
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
        if self.train_sources and self.train_shards:
            raise ConfigError(self.key("train_sources"), "and data.train_shards are both set: give one (a single "
                              "pattern in train_shards, or every source in train_sources)")
        self.train_sources = [_train_source(value, f"{self.key('train_sources')}[{position}]")
                              for position, value in enumerate(self.train_sources)]
        if self.source == "embeddings":  # cached features hold no frames to blend
            blended = [f"{self.key('train_sources')}[{position}].synthesis"
                       for position, entry in enumerate(self.train_sources) if entry.synthesis]
            if blended or self.val_synthesis:
                raise ConfigError((blended or [self.key("val_synthesis")])[0], "needs data.source=videos: a synthesis "
                                  "blends video frames, and cached embeddings (data.source=embeddings) have none")


# ---------------------------------------------------------------------------------------------- model
@dataclasses.dataclass
class ModelConfig(Section):
    """The detector: backbone + temporal head. Its names and options are checked against the model registries by
    ``dfdtrain.models.checks.check_model_config`` (when an experiment, a run's config or a bundle is loaded)."""

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
    # a ViT backbone's features (timm vision_transformer: CLIP, DINOv2): "" its own (CLIP, DINOv2: the class token),
    # token (the class token), avg (the mean of the patch tokens)
    global_pool: Literal["", "token", "avg"] = ""


@dataclasses.dataclass
class FinetuneConfig(Section):
    SECTION = "finetune"
    freeze_backbone: bool = False  # train the head only, for the whole run
    frozen_epochs: NonNegativeInt = 0  # two-phase: this many epochs with the backbone frozen, then unfreeze
    unfreeze_last: Annotated[int, Range(-1)] = -1  # stages to unfreeze after the frozen phase (-1 = all)
    backbone_lr_scale: NonNegative = 0.1  # backbone learning rate = head learning rate x this, once unfrozen
    freeze_batchnorm: bool = False  # keep BatchNorm running statistics of the backbone fixed
    # which backbone tensors train: full (the keys above) | layernorm (GenD: LayerNorm affine parameters + head) |
    # lora (low-rank A, B beside each targeted frozen Linear + head) | svd_residual (Effort) | adapter (a bottleneck
    # per block); all but full take none of the keys above but freeze_batchnorm
    method: str = "full"
    lora_rank: Count = 8  # lora: r, the rank of each update B A
    lora_alpha: Positive = 16.0  # lora: the update is scaled by lora_alpha / lora_rank
    # lora: the backbone's nn.Linear layers to adapt, by the last component of their name (timm ViTs: attention
    # qkv and proj, MLP fc1 and fc2)
    lora_targets: list = dataclasses.field(default_factory=lambda: ["qkv", "proj", "fc1", "fc2"])
    # svd_residual (Effort): each targeted nn.Linear's weight is split by SVD; the principal components stay frozen,
    # the last svd_residual_rank singular triplets (U, S, V) train
    svd_residual_rank: Count = 1
    # svd_residual: the layers, as lora_targets (Effort: self-attention only; timm's fused qkv is split into q, k, v)
    svd_targets: list = dataclasses.field(default_factory=lambda: ["qkv", "proj"])
    # svd_residual: the extra loss is svd_orthogonal_weight x the mean orthogonality loss of [U_r, U_res] and
    # [V_r; V_res] + svd_singular_weight x the mean loss keeping each weight's Frobenius norm, means over the
    # projections (Effort's lambda_reg = 1.0 is both at 1.0; both 0: no extra loss, as Effort's released code)
    svd_orthogonal_weight: NonNegative = 1.0
    svd_singular_weight: NonNegative = 1.0
    adapter_dim: NonNegativeInt = 0  # adapter: the bottleneck width after each block; 0 = half the block's (StA)
    # adapter: a depthwise temporal convolution over each clip's frames inside each bottleneck (StA's temporal branch)
    adapter_temporal: bool = False

    def check(self):
        for key in ("lora_targets", "svd_targets"):
            names = getattr(self, key)
            if not names or not all(isinstance(name, str) and name for name in names):
                raise ConfigError(self.key(key), f"must be a list of layer names, not {names!r}")


@dataclasses.dataclass
class OptimConfig(Section):
    SECTION = "optim"
    optimizer: str = "adamw"  # an optimizer name: adamw | adam | sgd (sgd: Nesterov momentum)
    lr: Positive = 1e-3  # the head's peak learning rate (the backbone's: x finetune.backbone_lr_scale)
    weight_decay: NonNegative = 0.01  # not applied to biases and norm layers
    momentum: Annotated[float, Range(0, 1)] = 0.9  # sgd
    schedule: str = "cosine"  # a schedule name, after warmup: cosine | poly | constant
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
    threshold_rule: str = "fixed"  # a threshold rule name; fixed: `threshold`; eer / max_f1: chosen there
    early_stopping_metric: str = "val_loss"  # val_loss or a metric path like video.head.auc
    early_stopping_mode: Literal["min", "max"] = "min"
    patience: NonNegativeInt = 0  # epochs without improvement before stopping; 0 = never stop early
    checkpoint_every: NonNegativeInt = 0  # optimizer steps between mid-epoch checkpoints; 0 = end of epoch only
    log_every: Count = 10  # optimizer steps between train log lines (and finiteness checks)
    deepspeed_config: str = ""  # a raw DeepSpeed JSON whose keys override the generated ones
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when available


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
        """Rules between sections that need no registry (those are ``dfdtrain.checks.check_experiment``'s)."""
        if self.data.class_balance and self.train.class_weights:
            raise ConfigError("data.class_balance", "and train.class_weights both correct the class imbalance: "
                              "together they correct it twice; keep one")
