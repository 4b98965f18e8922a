"""Load a trained detector from what training leaves behind, and save it as a self-contained bundle.

``load_detector(path)`` accepts:
  * a bundle folder (``model.safetensors`` + ``detector.json``), as written by ``export_bundle`` — needs no
    run directory;
  * a training checkpoint folder (``RUN/checkpoints/best`` or ``last``: DeepSpeed's
    ``mp_rank_00_model_states.pt`` or the DDP engine's ``checkpoint.pt``, with the ``detector.json`` training
    writes beside them; checkpoints of earlier versions without it use the run's ``config.yaml`` two levels up);
  * a run directory (its ``checkpoints/best``, else ``last``).
It returns ``(model in eval mode, DetectorSettings)``: what inference needs to see videos as training did —
the model config, the resolved clip spec (sampler, crop, input size, normalisation, input transform), the
decision threshold and the calibration (temperature) fitted on validation data.

A run with ``finetune.method`` other than full checkpoints only its trained tensors; its ``detector.json``
names the method (``finetune``) and the base (``base``, ``dfdtrain.models.base_identity``), and the model is
rebuilt from the two (``base_weights``: the base's weights file when the recorded one is not on this machine).
A bundle always holds every tensor; ``export_bundle(..., merge=True)`` folds LoRA / SVD residual layers into
plain ones first (``merge_finetuned``): the bundle then describes a plain model (method full).
"""

import dataclasses
from pathlib import Path

from dfdtrain.metrics.calibration import Calibration
from dfdtrain.config import (ClipSpec, FinetuneConfig, Fraction, ModelConfig, Section, build_section, config_to_dict,
                             load_config)
from dfdtrain.core.errors import DfdError, one_line
from dfdtrain.core.fileio import (atomic_open, load_plain, loads_untrusted_json, open_regular_file,
                             read_safetensors_header, write_json)
from dfdtrain.models.base_identity import (BaseIdentity, build_with_method, check_finetune_limits, rebuild_detector,
                                          trained_names)
from dfdtrain.models.checks import check_clip_for_model, check_model_config
from dfdtrain.models.detector import build_detector_from_config
from dfdtrain.models.finetune_methods import merge_finetuned

BUNDLE_WEIGHTS = "model.safetensors"
SETTINGS_FILE = "detector.json"
SETTINGS_FORMAT = "dfdtrain-detector/2"
MAX_SETTINGS_BYTES = 2**20  # a detector.json is about 1 KB
# clips a detector.json read from disk may ask for (far above any trained detector's): beyond these, one clip
# alone would take gigabytes before the model runs
MAX_FRAMES = 1024
MAX_IMAGE_SIZE = 2048


@dataclasses.dataclass
class DetectorSettings(Section):
    """``detector.json``: everything besides the weights that a trained detector needs (typed, checked)."""

    name: str = ""  # the training run's name
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    clip: ClipSpec = dataclasses.field(default_factory=ClipSpec)  # resolved: image_size, mean and std set
    threshold: Fraction = 0.5  # calibrated P(fake) at or above which a video is called FAKE
    # P(fake) = sigmoid(video logit / temperature); fitted on validation at each checkpoint or by `calibrate`
    calibration: Calibration = dataclasses.field(default_factory=Calibration)
    # the fine-tuning method applied to the built model before its weights load (full: none); written only when
    # not full, and with ``base`` only for checkpoints that hold the trained tensors alone (older readers and
    # full runs see the detector.json they always did)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    base: BaseIdentity = dataclasses.field(default_factory=BaseIdentity)

    def check(self):
        if not self.clip.resolved:
            raise DfdError("detector settings need a resolved clip spec (image_size, mean and std)")

    def to_json(self):
        values = config_to_dict(self)
        if self.finetune.method == "full":
            values.pop("finetune")
        if not self.base.needed:
            values.pop("base")
        return {"format": SETTINGS_FORMAT, **values}


def calibrated(settings, calibration):
    """``settings`` with ``calibration`` and the threshold it chose."""
    return dataclasses.replace(settings, calibration=calibration, threshold=calibration.threshold)


def detector_settings(config, model):
    """The DetectorSettings of a training config and its built model (the clip resolved with the backbone)."""
    model_config = dataclasses.replace(config.model, pretrained=False, pretrained_file="")  # weights come with it
    return DetectorSettings(name=config.name, model=model_config,
                            clip=config.clip.resolve(model.backbone_info.data_config),
                            threshold=config.train.threshold, finetune=config.finetune)


def _settings_from_version_1(values):
    """detector.json as written before the clip spec existed: flat sampler/crop/normalisation keys."""
    clip = {"sampler": {"mode": values["sampler"], "num_frames": values["num_frames"],
                        "stride": values.get("stride", 1), "every": values.get("every", 1)},
            "crop": values["crop"], "margin": values["margin"], "image_size": values["image_size"],
            "mean": values["mean"], "std": values["std"], "input_transform": values.get("input_transform", "rgb")}
    return {"name": values.get("name", ""), "model": values["model"], "clip": clip, "threshold": values["threshold"]}


def read_settings(path):
    """DetectorSettings from a ``detector.json`` (this version's or the first). It may come from someone else:
    only a regular file of at most MAX_SETTINGS_BYTES, JSON without NaN / infinities or deep nesting."""
    with open_regular_file(path) as handle:
        data = handle.read(MAX_SETTINGS_BYTES + 1)
    if len(data) > MAX_SETTINGS_BYTES:
        raise DfdError(f"{path}: unreadable detector settings (larger than {MAX_SETTINGS_BYTES} bytes)")
    try:
        values = loads_untrusted_json(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise DfdError(f"{path}: unreadable detector settings ({one_line(error, 200)})") from None
    if not isinstance(values, dict):
        raise DfdError(f"{path}: detector settings must be a JSON object")
    if values.pop("format", None) != SETTINGS_FORMAT:
        try:
            values = _settings_from_version_1(values)
        except KeyError as error:
            raise DfdError(f"{path}: not a detector.json (no {error.args[0]!r})") from None
        except (TypeError, AttributeError):
            raise DfdError(f"{path}: not a detector.json (its values are not what the format holds)") from None
    if not isinstance(values.get("model", {}), dict):
        raise DfdError(f"{path}: model must be a JSON object")
    values["model"] = {**values.get("model", {}), "pretrained": False, "pretrained_file": ""}  # never a download
    try:
        settings = build_section(DetectorSettings, values, "")
        check_model_config(settings.model)
        check_finetune_limits(settings.finetune)
    except DfdError as error:
        raise DfdError(f"{path}: {error}") from None
    if settings.clip.sampler.num_frames > MAX_FRAMES:
        raise DfdError(f"{path}: clip.sampler.num_frames must be at most {MAX_FRAMES}, not "
                       f"{settings.clip.sampler.num_frames}")
    if settings.clip.image_size > MAX_IMAGE_SIZE:
        raise DfdError(f"{path}: clip.image_size must be at most {MAX_IMAGE_SIZE}, not {settings.clip.image_size}")
    return settings


def write_settings(settings, folder):
    write_json(Path(folder) / SETTINGS_FILE, settings.to_json())


def _training_weights(checkpoint):
    """(state dict, its file) of a training checkpoint folder; a file that does not hold one is one line."""
    import torch

    for name, key in (("mp_rank_00_model_states.pt", "module"), ("checkpoint.pt", "model")):
        path = checkpoint / name
        if not path.is_file():
            continue
        state = load_plain(path)
        if not isinstance(state, dict):
            raise DfdError(f"{path}: not a training checkpoint (it holds a {type(state).__name__}, not a dict with "
                           f"{key!r})")
        if key not in state:
            keys = ", ".join(sorted(map(repr, state))[:5]) or "nothing"
            raise DfdError(f"{path}: not a training checkpoint (no {key!r} weights; it holds {keys})")
        weights = state[key]
        if not isinstance(weights, dict):
            raise DfdError(f"{path}: {key!r} is a {type(weights).__name__}, not a dict of weights")
        for weight_name, value in weights.items():
            if not isinstance(value, torch.Tensor):
                raise DfdError(f"{path}: {key!r} holds {type(value).__name__} at {str(weight_name)[:80]!r}, "
                               "not a tensor")
        return weights, path
    raise DfdError(f"{checkpoint}: no model weights (expected mp_rank_00_model_states.pt or checkpoint.pt)")


def _shape(shape):
    return f"[{', '.join(map(str, shape))}]"


def check_weights_fit(model, shapes, source, settings_source, expected=None):
    """One line naming ``source`` unless the weights ({name: shape}) are exactly the model's: the same names,
    each the same shape. Checked before any weight is loaded, so a file for another model is caught from its
    header (``settings_source``, the detector.json, is named: it may be what is wrong). ``expected``: the names
    the file must hold when not every tensor of the model (a frozen-base checkpoint: ``trained_names``)."""
    state = model.state_dict()
    names = state if expected is None else [name for name in state if name in expected]
    expected = {name: tuple(state[name].shape) for name in names}
    missing = [name for name in expected if name not in shapes]
    unexpected = [name for name in shapes if name not in expected]
    differ = [name for name in expected if name in shapes and tuple(shapes[name]) != expected[name]]
    if not (missing or unexpected or differ):
        return
    parts = [f"{len(items)} {what}" for items, what in ((differ, "of another shape"), (missing, "missing"),
                                                          (unexpected, "unexpected")) if items]
    if differ:
        example = f"{differ[0]} is {_shape(shapes[differ[0]])} there, {_shape(expected[differ[0]])} in the model"
    else:
        example = str((missing or unexpected)[0])[:120]
    what = "tensors in the model" if len(expected) == len(state) else "trained tensors expected"
    raise DfdError(f"{source}: the weights do not fit the model {settings_source} describes ({len(expected)} "
                   f"{what}: {', '.join(parts)}; e.g. {example})")


def _load_weights(model, weights, source, settings_source, expected=None):
    """Load ``weights`` (all of the model's, or exactly the ``expected`` names) after checking them."""
    import torch

    check_weights_fit(model, {name: tuple(value.shape) for name, value in weights.items()}, source,
                      settings_source, expected)
    for name, value in weights.items():  # a NaN weight makes every score NaN ("REAL nan"): refused here
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise DfdError(f"{source}: weight {name} holds NaN or infinite values")
    model.load_state_dict(weights, strict=expected is None)


def _model_for(settings, settings_source, checkpoint, base_weights):
    """(model before its weights load, the names its weights file must hold: None for all of them)."""
    if settings.base.needed:  # a frozen-base checkpoint: the base rebuilt and checked, then the trained tensors
        model = rebuild_detector(settings, settings_source, checkpoint, base_weights)
        return model, trained_names(model)
    return build_with_method(settings, settings_source), None


def _checkpoint_settings(checkpoint):
    """A training checkpoint's settings: its own detector.json, or (earlier versions) the run's config."""
    if (checkpoint / SETTINGS_FILE).is_file():
        return read_settings(checkpoint / SETTINGS_FILE)
    config_path = checkpoint.parent.parent / "config.yaml"
    if not config_path.is_file():
        raise DfdError(f"{checkpoint}: not a bundle, and no {SETTINGS_FILE} or run config at {config_path}")
    config = load_config(config_path, ["model.pretrained=false", "model.pretrained_file="])
    check_model_config(config.model)
    check_clip_for_model(config.model, config.clip, config.data.source)
    return detector_settings(config, build_detector_from_config(config.model, config.clip))


def load_detector(path, device="cpu", base_weights=None):
    """(model, DetectorSettings) from a bundle, a training checkpoint or a run directory. ``base_weights``: the
    base model's weights file for a checkpoint holding only trained tensors whose recorded base file is not
    here (or came from the timm hub); it must be the base the run trained on (its sha256 is checked)."""
    path = Path(path)
    if not path.exists():
        raise DfdError(f"{path}: checkpoint not found")
    if (path / "checkpoints").is_dir():  # a run directory
        for tag in ("best", "last"):
            if (path / "checkpoints" / tag).is_dir():
                return load_detector(path / "checkpoints" / tag, device, base_weights)
        raise DfdError(f"{path}: run directory has no checkpoints/best or checkpoints/last")
    if (path / BUNDLE_WEIGHTS).is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load

        weights_file, settings_file = path / BUNDLE_WEIGHTS, path / SETTINGS_FILE
        settings = read_settings(settings_file)
        header, size = read_safetensors_header(weights_file)  # checked before the model is built or a tensor read
        model, expected = _model_for(settings, settings_file, path, base_weights)
        check_weights_fit(model, {name: shape for name, (_, shape) in header.items()}, weights_file, settings_file,
                          expected)
        with open_regular_file(weights_file) as handle:  # read once, no more than was checked (no mmap: a file
            data = handle.read(size)                     # changed meanwhile cannot crash the process)
        try:
            weights = load(data)
        except SafetensorError as error:
            raise DfdError(f"{weights_file}: not a valid safetensors file ({one_line(error)})") from None
        _load_weights(model, weights, weights_file, settings_file, expected)
        return model.to(device).eval(), settings
    settings = _checkpoint_settings(path)
    settings_source = (path / SETTINGS_FILE if (path / SETTINGS_FILE).is_file()
                       else path.parent.parent / "config.yaml")
    weights, weights_file = _training_weights(path)
    model, expected = _model_for(settings, settings_source, path, base_weights)
    _load_weights(model, weights, weights_file, settings_source, expected)
    return model.to(device).eval(), settings


def settings_folder(path):
    """The folder whose detector.json ``load_detector(path)`` reads: a run directory's best (else last)
    checkpoint, or the checkpoint folder or bundle itself."""
    path = Path(path)
    if not path.is_dir():
        raise DfdError(f"{path}: checkpoint not found")
    if (path / "checkpoints").is_dir():
        for tag in ("best", "last"):
            if (path / "checkpoints" / tag).is_dir():
                return path / "checkpoints" / tag
        raise DfdError(f"{path}: run directory has no checkpoints/best or checkpoints/last")
    return path



def merged_detector(model, settings):
    """(``model`` with every LoRA / SVD residual layer folded into a plain one, the settings of that plain model:
    method full, no base needed). One line when the method leaves layers a plain model does not have."""
    merged = merge_finetuned(model).eval()
    plain_settings = dataclasses.replace(settings, finetune=FinetuneConfig(), base=BaseIdentity())
    if settings.finetune.method != "full":
        plain = build_with_method(plain_settings, "--merge")
        expected = {name: tuple(value.shape) for name, value in plain.state_dict().items()}
        found = {name: tuple(value.shape) for name, value in merged.state_dict().items()}
        if expected != found:
            extra = sorted(set(found) ^ set(expected)) or [name for name in expected if expected[name] != found[name]]
            raise DfdError(f"--merge: finetune.method {settings.finetune.method} leaves layers that do not fold into "
                           f"plain ones (e.g. {extra[0][:120]}); export without --merge")
    return merged, plain_settings


def write_bundle(model, settings, out_dir):
    """Write ``out_dir/model.safetensors`` (every tensor of ``model``) + ``detector.json`` (``settings``, with no
    base needed: the bundle is complete)."""
    from safetensors.torch import save

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = {name: value.detach().contiguous() for name, value in model.state_dict().items()}
    with atomic_open(out_dir / BUNDLE_WEIGHTS, "wb") as handle:
        handle.write(save(weights))
    write_settings(dataclasses.replace(settings, base=BaseIdentity()), out_dir)
    return out_dir


def export_bundle(checkpoint, out_dir, base_weights=None, merge=False):
    """Write a self-contained bundle (``write_bundle``) from any checkpoint ``load_detector`` reads, merged
    (``merged_detector``) when ``merge``; returns (model written, its settings)."""
    model, settings = load_detector(checkpoint, base_weights=base_weights)
    if merge:
        model, settings = merged_detector(model, settings)
    write_bundle(model, settings, out_dir)
    return model, dataclasses.replace(settings, base=BaseIdentity())
