"""Load a trained detector from what training leaves behind, and save it as a self-contained bundle.

``load_detector(path)`` accepts:
  * a bundle folder (``model.safetensors`` + ``detector.json``: the model and data settings), as written by
    ``export_bundle`` — needs no run directory;
  * a training checkpoint folder (``RUN/checkpoints/best`` or ``last``; DeepSpeed's ``mp_rank_00_model_states.pt``
    or the DDP engine's ``checkpoint.pt``), whose run's ``config.yaml`` sits two levels up;
  * a run directory (its ``checkpoints/best``, else ``last``).
It returns ``(model in eval mode, settings)``; settings hold what inference needs to see frames as training
did: sampler, number of frames, image size, crop mode and margin, normalisation, threshold.
"""

import json
from pathlib import Path

import torch

from dfdtrain.config import config_from_dict, config_to_dict, load_config
from dfdtrain.errors import DfdError
from dfdtrain.fileio import atomic_open, write_json
from dfdtrain.models.detector import build_detector_from_config

BUNDLE_WEIGHTS = "model.safetensors"
BUNDLE_SETTINGS = "detector.json"


def _settings(config, model):
    data_config = model.backbone_info["data_config"]
    return {
        "name": config.name,
        "model": config_to_dict(config)["model"],
        "sampler": config.data.sampler, "num_frames": config.data.num_frames, "stride": config.data.stride,
        "every": config.data.every,
        "image_size": config.data.image_size or int(data_config["input_size"][-1]),
        "crop": config.data.crop, "margin": config.data.margin, "input_transform": config.data.input_transform,
        "mean": list(data_config["mean"]), "std": list(data_config["std"]),
        "threshold": config.train.threshold,
    }


def _config_from_settings(settings):
    # the weights come from the bundle: never reach for a hub or a weights file
    return config_from_dict({"model": {**settings["model"], "pretrained": False, "pretrained_file": ""}})


def _training_weights(checkpoint):
    deepspeed_file = checkpoint / "mp_rank_00_model_states.pt"
    ddp_file = checkpoint / "checkpoint.pt"
    if deepspeed_file.is_file():
        return torch.load(deepspeed_file, map_location="cpu", weights_only=False)["module"]
    if ddp_file.is_file():
        return torch.load(ddp_file, map_location="cpu", weights_only=False)["model"]
    raise DfdError(f"{checkpoint}: no model weights (expected mp_rank_00_model_states.pt or checkpoint.pt)")


def _load_weights(model, weights, source):
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise DfdError(f"{source}: weights do not fit the configured model "
                       f"({len(missing)} missing, {len(unexpected)} unexpected, e.g. {(missing or unexpected)[0]})")


def load_detector(path, device="cpu"):
    """(model, settings) from a bundle, a training checkpoint or a run directory."""
    path = Path(path)
    if not path.exists():
        raise DfdError(f"{path}: checkpoint not found")
    if (path / BUNDLE_SETTINGS).is_file():
        from safetensors.torch import load_file

        settings = json.loads((path / BUNDLE_SETTINGS).read_text())
        model = build_detector_from_config(_config_from_settings(settings).model)
        _load_weights(model, load_file(str(path / BUNDLE_WEIGHTS)), path)
        return model.to(device).eval(), settings
    if (path / "checkpoints").is_dir():  # a run directory
        for tag in ("best", "last"):
            if (path / "checkpoints" / tag).is_dir():
                return load_detector(path / "checkpoints" / tag, device)
        raise DfdError(f"{path}: run directory has no checkpoints/best or checkpoints/last")
    config_path = path.parent.parent / "config.yaml"
    if not config_path.is_file():
        raise DfdError(f"{path}: not a bundle, and no run config at {config_path}")
    config = load_config(config_path, ["model.pretrained=false", "model.pretrained_file="])
    model = build_detector_from_config(config.model)
    _load_weights(model, _training_weights(path), path)
    return model.to(device).eval(), _settings(config, model)


def export_bundle(checkpoint, out_dir):
    """Write ``out_dir/model.safetensors`` + ``detector.json`` from any checkpoint ``load_detector`` reads."""
    from safetensors.torch import save

    model, settings = load_detector(checkpoint)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    weights = {name: value.detach().contiguous() for name, value in model.state_dict().items()}
    with atomic_open(out_dir / BUNDLE_WEIGHTS, "wb") as handle:
        handle.write(save(weights))
    write_json(out_dir / BUNDLE_SETTINGS, settings)
    return out_dir
