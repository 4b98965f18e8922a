"""Frozen-base checkpoints: what a run with ``finetune.method`` other than ``full`` stores, and how the model is
rebuilt from it.

Such a run trains a small part of the model (LayerNorms, LoRA factors, SVD residuals, adapters, the head). Its
checkpoints hold only the *trained tensors* (``trained_names``: every parameter with requires_grad and every
buffer, the ``finetune_methods`` contract) and ``detector.json`` records the base they were trained on
(``BaseIdentity``): the backbone's timm name, how it was initialised (a local ``pretrained_file`` and its sha256,
the timm hub, or a random init from the run's seed) and a sha256 over the backbone as built, before the method
changed it (``base_sha256``). ``rebuild_detector`` builds the base again, refuses, with one line, a base that is not
the recorded one (never silently wrong scores), then applies the method. The hash is taken before the method
because what a method derives from the base (Effort's SVD factors) is not bit-reproducible across thread counts
and devices, while the base is.
"""

import dataclasses
import hashlib
from pathlib import Path
from typing import Annotated, Literal

import torch

from dfdtrain.config import FinetuneConfig, Section
from dfdtrain.config.schema import Range
from dfdtrain.core.errors import DfdError
from dfdtrain.data.shards.catalog import file_sha256
from dfdtrain.models.detector import build_detector_from_config
from dfdtrain.models.finetune_methods import apply_finetune

RANDOM, FILE, HUB = "random", "file", "timm hub"


@dataclasses.dataclass
class BaseIdentity(Section):
    """``detector.json``'s ``base``: set only when the weights beside it are the trained tensors alone."""

    SECTION = "base"
    model: str = ""  # the backbone as built (timm name with its pretrained tag)
    init: Literal["", "random", "file", "timm hub"] = ""  # how its weights were made
    seed: Annotated[int, Range(-2**63, 2**64 - 1)] = 0  # random (and the head's init): the run's seed, set right before the model was built
    file: str = ""  # file: the pretrained_file the run read (absolute)
    file_sha256: str = ""  # file: the sha256 of its bytes
    sha256: str = ""  # over the backbone's tensors as built (names, dtypes, shapes, values); "" = weights complete
    tensors: int = 0  # how many tensors the backbone has

    @property
    def needed(self):
        return bool(self.sha256)

    def describe(self):
        how = {RANDOM: f"random init, seed {self.seed}", FILE: f"pretrained_file {self.file}",
               HUB: "the timm hub's weights"}.get(self.init, self.init)
        return f"{self.model} ({how})"


def trained_only(finetune_config):
    """Whether a run with this FinetuneConfig stores only its trained tensors (every method but ``full``)."""
    return finetune_config.method != "full"


def trained_names(model):
    """The state-dict names a frozen-base checkpoint stores: parameters with requires_grad, and buffers."""
    parameters = dict(model.named_parameters(remove_duplicate=False))
    return {name for name in model.state_dict()
            if name not in parameters or parameters[name].requires_grad}


def base_sha256(model):
    """(sha256, count) over the backbone of ``model`` as built, before any finetune method: each state-dict
    tensor's name, dtype, shape and bytes, in name order."""
    state = model.backbone.state_dict()
    digest = hashlib.sha256()
    for name in sorted(state):
        value = state[name].detach()
        digest.update(f"{name}\0{value.dtype}\0{tuple(value.shape)}\0".encode())
        if value.numel():
            digest.update(value.to("cpu").contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest(), len(state)


def base_identity(model_config, seed, model):
    """The BaseIdentity of a run about to train ``model`` (as built, before its finetune method is applied), built
    from ``model_config`` right after seeding with ``seed``."""
    if model_config.pretrained_file:
        path = Path(model_config.pretrained_file).resolve()
        init, file, file_digest = FILE, str(path), file_sha256(str(path))
    else:
        init, file, file_digest = (HUB if model_config.pretrained else RANDOM), "", ""
    digest, count = base_sha256(model)
    return BaseIdentity(model=model.backbone_info.model_name, init=init, seed=seed, file=file,
                        file_sha256=file_digest, sha256=digest, tensors=count)


def _base_file(base, source, checkpoint, base_weights):
    """The local file the base's weights come from: ``base_weights`` when given, else the recorded one (which
    must still hold the bytes it held). Never a download."""
    if base_weights:
        path = Path(base_weights)
        if not path.is_file():
            raise DfdError(f"--base-weights {path}: no such file")
        return str(path)
    hint = f"pass --base-weights PATH (the weights of {base.model} the run was trained from)"
    if base.init == HUB:
        raise DfdError(f"{checkpoint}: holds only the trained tensors of a base built from the timm hub's "
                       f"{base.model}, which is never downloaded here; {hint}")
    path = Path(base.file)
    if not path.is_file():
        raise DfdError(f"{checkpoint}: holds only the trained tensors; its base weights {path} (named in "
                       f"{source}) are not there: {hint}")
    found = file_sha256(str(path))
    if found != base.file_sha256:
        raise DfdError(f"{checkpoint}: its base weights {path} changed since training (sha256 {found[:16]}, "
                       f"expected {base.file_sha256[:16]}); {hint}")
    return str(path)


def build_with_method(settings, source, base_weights_file=None, check_base=None):
    """The detector ``settings`` (a DetectorSettings) describe, with its finetune method applied, built under
    the recorded seed (a random-init base is the run's); ``base_weights_file``: a pretrained file to load;
    ``check_base(model)``: called on the base as built, before the method."""
    model_config = settings.model
    if base_weights_file:
        model_config = dataclasses.replace(model_config, pretrained=False, pretrained_file=base_weights_file)
    with torch.random.fork_rng(devices=[]):  # the caller's random stream stays as it was
        torch.manual_seed(settings.base.seed)
        try:
            model = build_detector_from_config(model_config, settings.clip)
        except DfdError as error:
            raise DfdError(f"{source}: {error}") from None
        if check_base is not None:
            check_base(model)  # its one line names the checkpoint itself
        try:
            if settings.finetune.method != "full":
                apply_finetune(model, settings.finetune)
        except DfdError as error:
            raise DfdError(f"{source}: {error}") from None
    return model


def rebuild_detector(settings, source, checkpoint, base_weights=None):
    """The model of a frozen-base checkpoint before its trained tensors load: the base rebuilt as recorded in
    ``settings.base`` (``base_weights``: the base's weights file, for a base recorded elsewhere or from the hub)
    and checked against the recorded sha256 (one line when it differs), then the method applied."""
    base = settings.base
    weights_file = _base_file(base, source, checkpoint, base_weights) if (base.init != RANDOM or base_weights) \
        else None

    def check_base(model):
        digest, count = base_sha256(model)
        if (digest, count) != (base.sha256, base.tensors):
            found = f"pretrained_file {weights_file}" if weights_file else f"random init, seed {base.seed}"
            raise DfdError(f"{checkpoint}: was trained on the base {base.describe()} (sha256 {base.sha256[:16]}, "
                           f"{base.tensors} tensors) but the base built here ({found}) differs (sha256 "
                           f"{digest[:16]}, {count} tensors); pass --base-weights PATH of the run's base")

    return build_with_method(settings, source, weights_file, check_base)


FINETUNE_LIMITS = {"lora_rank": 4096, "svd_residual_rank": 4096, "adapter_dim": 65536}


def check_finetune_limits(finetune):
    """detector.json is untrusted: the sizes a finetune section asks for stay far above any trained model's."""
    if not isinstance(finetune, FinetuneConfig):
        return
    for key, limit in FINETUNE_LIMITS.items():
        value = getattr(finetune, key, None)
        if isinstance(value, int) and value > limit:
            raise DfdError(f"finetune.{key} must be at most {limit}, not {value}")


def load_trained_tensors(model, weights, source):
    """Load a frozen-base checkpoint's ``weights`` into ``model`` (the base and method already there): they must
    be exactly its ``trained_names``, nothing missing and nothing else (one line naming ``source``)."""
    expected = trained_names(model)
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        example = (missing or unexpected)[0][:120]
        raise DfdError(f"{source}: holds {len(weights)} tensors, not the {len(expected)} this model trains "
                       f"({len(missing)} missing, {len(unexpected)} unexpected; e.g. {example}): another "
                       "finetune.method or model?")
    model.load_state_dict(weights, strict=False)
