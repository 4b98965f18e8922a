"""The cross-component rules of an experiment config: every key that names an entry of a registry of another layer
is checked against that registry here, when an experiment is loaded (``load_experiment``, what ``train`` and
``embed`` run; ``experiment_from_dict`` for a dict), so a typo stops a run within seconds with one
``ConfigError`` line naming the key, before a worker process or a first forward pass.

The config layer (``dfdtrain.config``) checks what needs nothing above it when a section is built: types, choices,
ranges, rules between fields. ``check_experiment`` adds, in the order of the sections (data, model, finetune, optim,
train, then the rules between sections): the decoder, the model's backbone, head and options and the clips a clip
backbone takes (``dfdtrain.models.checks``), the fine-tuning method and the stage policies it excludes
(``dfdtrain.models.finetune_methods``), the optimizer and schedule (``dfdtrain.training.optim``), the threshold rule
(``dfdtrain.metrics.calibration``), the engine, the early-stopping metric and its direction, and a global batch that
fits an epoch on the launcher's world size.
"""

from dfdtrain.config import LOWER_IS_BETTER, ConfigError, as_written, config_from_dict, load_config, one_of
from dfdtrain.core.distributed import rank_and_world
from dfdtrain.data.decode.decoders import DECODERS
from dfdtrain.evaluation.scoring import check_metric_path
from dfdtrain.metrics.calibration import THRESHOLD_RULES
from dfdtrain.models.checks import check_clip_for_model, check_model_config
from dfdtrain.models.finetune_methods import FINETUNE_METHODS
from dfdtrain.training.engines import ENGINES
from dfdtrain.training.optim import OPTIMIZERS, SCHEDULES


def load_experiment(path=None, overrides=()):
    """The ExperimentConfig of a YAML file (optional) plus ``key.sub=value`` overrides (``load_config``), checked
    against the registries (``check_experiment``)."""
    moved = {}
    return _checked(load_config(path, overrides, moved), moved)


def experiment_from_dict(values, moved=None):
    """The ExperimentConfig of a (partial) nested dict (``config_from_dict``), checked against the registries."""
    moved = {} if moved is None else moved
    return _checked(config_from_dict(values, moved), moved)


def _checked(config, moved):
    """``config`` once ``check_experiment`` passes; an error about a key set under its earlier name says so, as the
    config layer's own errors do."""
    try:
        return check_experiment(config)
    except ConfigError as error:
        raise as_written(error, moved) from None


def check_experiment(config):
    """``config`` (an ExperimentConfig), or the first ConfigError of the rules that need a registry or the
    launcher, section by section."""
    _check_registered(DECODERS, config.data.decoder, "data.decoder")
    check_model_config(config.model)
    check_clip_for_model(config.model, config.clip, config.data.source)  # the model's rules in one visit
    _check_finetune(config.finetune)
    _check_named(OPTIMIZERS, config.optim.optimizer, "optim.optimizer")
    _check_named(SCHEDULES, config.optim.schedule, "optim.schedule")
    _check_train(config.train)
    if config.train.early_stopping_metric.startswith("synthetic.") and not config.data.val_synthesis:
        raise ConfigError("train.early_stopping_metric", f"is {config.train.early_stopping_metric!r}, a metric of "
                          "synthetic twins, which validation makes only with data.val_synthesis set (sbi or vb)")
    _check_epoch_fits_a_batch(config.data)
    return config


def _check_registered(registry, name, path):
    problem = registry.problem(name)
    if problem:
        raise ConfigError(path, problem)


def _check_named(registry, name, path):
    """``name`` is an entry of ``registry``, or "must be one of ..." as a ``Literal`` key says it, the entries in
    the order they were registered."""
    if name not in registry:
        raise ConfigError(path, one_of(name, list(registry)))


def _check_finetune(finetune):
    """``finetune.method`` is a registered method; one other than ``full`` sets the trainable tensors itself, so
    the stage policies (freeze_backbone, frozen_epochs, unfreeze_last) are refused with it rather than ignored."""
    _check_named(FINETUNE_METHODS, finetune.method, "finetune.method")
    if finetune.method != "full":
        policies = [f"{name}={str(value).lower()}" for name, value, default in (
            ("freeze_backbone", finetune.freeze_backbone, False), ("frozen_epochs", finetune.frozen_epochs, 0),
            ("unfreeze_last", finetune.unfreeze_last, -1)) if value != default]
        if policies:
            raise ConfigError("finetune.method", f"is {finetune.method!r}, which chooses the trained tensors "
                              f"itself; finetune.{', '.join(policies)} "
                              f"{'work' if len(policies) > 1 else 'works'} with method 'full' only")


def _check_train(train):
    _check_named(THRESHOLD_RULES, train.threshold_rule, "train.threshold_rule")
    _check_registered(ENGINES, train.engine, "train.engine")
    problem = check_metric_path(train.early_stopping_metric)
    if problem:
        raise ConfigError("train.early_stopping_metric", problem)
    lower_is_better = train.early_stopping_metric.split(".")[-1] in LOWER_IS_BETTER \
        or train.early_stopping_metric == "val_loss"
    wanted = "min" if lower_is_better else "max"
    if train.early_stopping_mode != wanted:
        raise ConfigError("train.early_stopping_mode",
                          f"is {train.early_stopping_mode!r}, which would keep the worst "
                          f"{train.early_stopping_metric}; set {wanted!r}")


def _check_epoch_fits_a_batch(data):
    """``data.epoch_samples`` holds at least one global batch on the launcher's world size (1 without one)."""
    world_size = rank_and_world()[1]
    if data.epoch_samples and data.epoch_samples < data.batch_size * world_size:
        raise ConfigError("data.epoch_samples", f"is {data.epoch_samples}, less than one global batch "
                          f"(data.batch_size {data.batch_size} x {world_size} process(es)): an epoch would "
                          "have no step")
