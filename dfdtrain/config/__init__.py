"""Experiment configuration: one tree of dataclasses, checked when it is built, loaded from YAML, overridable.

    config = load_config("configs/demo.yaml", ["model.head=lstm", "clip.sampler.num_frames=20"])

The package is three modules: ``schema`` (how a section checks its values), ``sections`` (the dataclasses) and
``loading`` (YAML, overrides, earlier names, saving); their public names are re-exported here.

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
in ``Annotated`` types) and the cross-field rules of each section's ``check``. Names that live in a registry of a
higher layer (backbone, head and its options, decoder, optimizer, schedule, engine, threshold rule, the
early-stopping metric) are checked against it when an experiment is loaded: ``dfdtrain.checks.load_experiment``
(``load_config`` + ``check_experiment``), what ``train`` and ``embed`` run. Every failure is a ``ConfigError``:
one line naming the key.
A float key is a finite number: NaN and infinity (``nan``, ``.inf``, ``-inf``, as YAML or text) are refused
whatever its range says (NaN passes every comparison), unless its annotation carries ``AllowInfinite()``
(``Annotated[float, AllowInfinite()]``: +-infinity allowed, never NaN). No key takes it today.

The flat names of earlier versions (``data.num_frames``, ``data.crop``, ``data.augment: false``, ...) are
still read, as ``LEGACY_KEYS`` maps them.
"""

from dfdtrain.config.loading import (LEGACY_KEYS, WANDB_MODE_NAMES, apply_override, as_written, config_from_dict,
                                     config_to_dict, load_config, move_legacy_keys, read_config,
                                     resolved_run_config, save_config, wandb_mode)
from dfdtrain.config.schema import (AllowInfinite, ConfigError, Count, Fraction, NonNegative, NonNegativeInt,
                                    Positive, Range, Section, build_section, check_value, choices,
                                    one_of)
from dfdtrain.config.sections import (LOWER_IS_BETTER, AugmentConfig, ClipSpec, DataConfig, ExperimentConfig,
                                      FinetuneConfig, LoggerConfig, ModelConfig, OptimConfig, SamplerConfig,
                                      TrainConfig, WandbConfig)

__all__ = [
    # schema
    "AllowInfinite", "ConfigError", "Count", "Fraction", "NonNegative", "NonNegativeInt", "Positive", "Range",
    "Section", "build_section", "check_value", "choices", "one_of",
    # sections
    "AugmentConfig", "ClipSpec", "DataConfig", "ExperimentConfig", "FinetuneConfig", "LOWER_IS_BETTER",
    "LoggerConfig", "ModelConfig", "OptimConfig", "SamplerConfig", "TrainConfig", "WandbConfig",
    # loading
    "LEGACY_KEYS", "WANDB_MODE_NAMES", "apply_override", "as_written", "config_from_dict", "config_to_dict",
    "load_config", "move_legacy_keys", "read_config", "resolved_run_config", "save_config", "wandb_mode",
]
