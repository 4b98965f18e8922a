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
"""

import dataclasses
import json
from pathlib import Path


from dfdtrain.calibration import Calibration
from dfdtrain.config import ClipSpec, Fraction, ModelConfig, Section, build_section, config_to_dict, load_config
from dfdtrain.errors import DfdError
from dfdtrain.fileio import atomic_open, load_plain, write_json
from dfdtrain.models.detector import build_detector_from_config

BUNDLE_WEIGHTS = "model.safetensors"
SETTINGS_FILE = "detector.json"
SETTINGS_FORMAT = "dfdtrain-detector/2"


@dataclasses.dataclass
class DetectorSettings(Section):
    """``detector.json``: everything besides the weights that a trained detector needs (typed, checked)."""

    name: str = ""  # the training run's name
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    clip: ClipSpec = dataclasses.field(default_factory=ClipSpec)  # resolved: image_size, mean and std set
    threshold: Fraction = 0.5  # calibrated P(fake) at or above which a video is called FAKE
    # P(fake) = sigmoid(video logit / temperature); fitted on validation at each checkpoint or by `calibrate`
    calibration: Calibration = dataclasses.field(default_factory=Calibration)

    def check(self):
        if not self.clip.resolved:
            raise DfdError("detector settings need a resolved clip spec (image_size, mean and std)")

    def to_json(self):
        return {"format": SETTINGS_FORMAT, **config_to_dict(self)}


def calibrated(settings, calibration):
    """``settings`` with ``calibration`` and the threshold it chose."""
    return dataclasses.replace(settings, calibration=calibration, threshold=calibration.threshold)


def detector_settings(config, model):
    """The DetectorSettings of a training config and its built model (the clip resolved with the backbone)."""
    model_config = dataclasses.replace(config.model, pretrained=False, pretrained_file="")  # weights come with it
    return DetectorSettings(name=config.name, model=model_config,
                            clip=config.clip.resolve(model.backbone_info["data_config"]),
                            threshold=config.train.threshold)


def _settings_from_version_1(values):
    """detector.json as written before the clip spec existed: flat sampler/crop/normalisation keys."""
    clip = {"sampler": {"mode": values["sampler"], "num_frames": values["num_frames"],
                        "stride": values.get("stride", 1), "every": values.get("every", 1)},
            "crop": values["crop"], "margin": values["margin"], "image_size": values["image_size"],
            "mean": values["mean"], "std": values["std"], "input_transform": values.get("input_transform", "rgb")}
    return {"name": values.get("name", ""), "model": values["model"], "clip": clip, "threshold": values["threshold"]}


def read_settings(path):
    """DetectorSettings from a ``detector.json`` (this version's or the first)."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, ValueError) as error:
        raise DfdError(f"{path}: unreadable detector settings ({error})") from None
    if not isinstance(values, dict):
        raise DfdError(f"{path}: detector settings must be a JSON object")
    if values.pop("format", None) != SETTINGS_FORMAT:
        try:
            values = _settings_from_version_1(values)
        except KeyError as error:
            raise DfdError(f"{path}: not a detector.json (no {error.args[0]!r})") from None
    values["model"] = {**values.get("model", {}), "pretrained": False, "pretrained_file": ""}  # never a download
    try:
        return build_section(DetectorSettings, values, "")
    except DfdError as error:
        raise DfdError(f"{path}: {error}") from None


def write_settings(settings, folder):
    write_json(Path(folder) / SETTINGS_FILE, settings.to_json())


def _training_weights(checkpoint):
    deepspeed_file = checkpoint / "mp_rank_00_model_states.pt"
    ddp_file = checkpoint / "checkpoint.pt"
    if deepspeed_file.is_file():
        return load_plain(deepspeed_file)["module"]
    if ddp_file.is_file():
        return load_plain(ddp_file)["model"]
    raise DfdError(f"{checkpoint}: no model weights (expected mp_rank_00_model_states.pt or checkpoint.pt)")


def _load_weights(model, weights, source):
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise DfdError(f"{source}: weights do not fit the configured model "
                       f"({len(missing)} missing, {len(unexpected)} unexpected, e.g. {(missing or unexpected)[0]})")


def _checkpoint_settings(checkpoint):
    """A training checkpoint's settings: its own detector.json, or (earlier versions) the run's config."""
    if (checkpoint / SETTINGS_FILE).is_file():
        return read_settings(checkpoint / SETTINGS_FILE)
    config_path = checkpoint.parent.parent / "config.yaml"
    if not config_path.is_file():
        raise DfdError(f"{checkpoint}: not a bundle, and no {SETTINGS_FILE} or run config at {config_path}")
    config = load_config(config_path, ["model.pretrained=false", "model.pretrained_file="])
    return detector_settings(config, build_detector_from_config(config.model, config.clip))


def load_detector(path, device="cpu"):
    """(model, DetectorSettings) from a bundle, a training checkpoint or a run directory."""
    path = Path(path)
    if not path.exists():
        raise DfdError(f"{path}: checkpoint not found")
    if (path / "checkpoints").is_dir():  # a run directory
        for tag in ("best", "last"):
            if (path / "checkpoints" / tag).is_dir():
                return load_detector(path / "checkpoints" / tag, device)
        raise DfdError(f"{path}: run directory has no checkpoints/best or checkpoints/last")
    if (path / BUNDLE_WEIGHTS).is_file():
        from safetensors.torch import load_file

        settings = read_settings(path / SETTINGS_FILE)
        model = build_detector_from_config(settings.model, settings.clip)
        _load_weights(model, load_file(str(path / BUNDLE_WEIGHTS)), path)
        return model.to(device).eval(), settings
    settings = _checkpoint_settings(path)
    model = build_detector_from_config(settings.model, settings.clip)
    _load_weights(model, _training_weights(path), path)
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


def export_bundle(checkpoint, out_dir):
    """Write ``out_dir/model.safetensors`` + ``detector.json`` from any checkpoint ``load_detector`` reads."""
    from safetensors.torch import save

    model, settings = load_detector(checkpoint)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = {name: value.detach().contiguous() for name, value in model.state_dict().items()}
    with atomic_open(out_dir / BUNDLE_WEIGHTS, "wb") as handle:
        handle.write(save(weights))
    write_settings(settings, out_dir)
    return out_dir
