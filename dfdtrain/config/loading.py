"""Loading and saving an experiment config: YAML file + ``key.sub=value`` overrides -> ``ExperimentConfig``.

``load_config(path, overrides)`` reads the file, applies the overrides (each value parsed as YAML) and builds the
checked tree (``config_from_dict``); the flat names of earlier versions are moved to their places first
(``LEGACY_KEYS``), and an error about such a key says how it was set (``as_written``). ``config_to_dict`` /
``save_config`` write it back; ``resolved_run_config`` is the config a run records (absolute ``run_dir``, the
W&B mode after ``WANDB_MODE``: ``wandb_mode``).
"""

import copy
import dataclasses
import os

import yaml

from dfdtrain.config.schema import ConfigError, build_section
from dfdtrain.config.sections import ExperimentConfig
from dfdtrain.core.errors import DfdError
from dfdtrain.core.fileio import atomic_open, read_yaml_mapping

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


def as_written(error, moved):
    """``error`` (a ConfigError) saying "... (set as data.num_frames)" when the user set its key under an earlier name
    (``moved[new] = old``, from ``move_legacy_keys``); else ``error`` itself."""
    if error.path in moved:
        return ConfigError(error.path, f"{error.problem} (set as {moved[error.path]})")
    return error


def config_from_dict(values, moved=None):
    """ExperimentConfig from a (partial) nested dict, e.g. {"model": {...}}; checked as it is built."""
    moved = {} if moved is None else moved
    move_legacy_keys(values, moved)
    try:
        return build_section(ExperimentConfig, values, "")
    except ConfigError as error:
        raise as_written(error, moved) from None


def read_config(path=None, overrides=()):
    """(values, moved): the raw config dict of a YAML file (optional) plus ``key.sub=value`` overrides, earlier
    names moved to their places (``moved[new] = old``, for ``as_written``)."""
    values = read_yaml_mapping(path, "config") if path else {}
    moved = {}
    move_legacy_keys(values, moved)
    for override in overrides:
        apply_override(values, override)
        move_legacy_keys(values, moved)  # an override may use an earlier name too; the later setting wins
    return values, moved


def load_config(path=None, overrides=(), moved=None):
    """ExperimentConfig from a YAML file (optional) plus ``key.sub=value`` overrides; ``moved``, when given, gets the
    earlier names they used (``moved[new] = old``) for a later check's message (``as_written``)."""
    values, found = read_config(path, overrides)
    if moved is not None:
        moved.update(found)
    return config_from_dict(values, found)


def resolved_run_config(config, run_dir):
    """``config`` as a run records it (its ``config.yaml``, the W&B run's config) and uses it: ``run_dir`` the
    absolute folder the run writes (``runs/<name>`` when the key is empty) and ``logger.wandb.mode`` after
    ``WANDB_MODE`` (``wandb_mode``)."""
    resolved = copy.deepcopy(config)
    resolved.run_dir = os.path.abspath(run_dir)
    resolved.logger.wandb.mode = wandb_mode(config.logger.wandb.mode)
    return resolved


def save_config(config, path):
    with atomic_open(path, "w") as handle:
        yaml.safe_dump(config_to_dict(config), handle, sort_keys=False)


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
