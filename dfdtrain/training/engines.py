"""Two ways to run the same training step (the ``ENGINES`` registry): DeepSpeed (default) and plain DDP.

Both offer one small interface used by the training loop, the ``Engine`` Protocol:
    with engine.micro_step():            # gradient sync only on the last micro-batch of an optimizer step
        video_logits, frame_logits = engine.forward(frames, mask)
        engine.backward(loss)
    stepped = engine.step()              # True when an optimizer step happened (gradient accumulation)
    engine.save(folder, state) / engine.load(folder) -> state
bf16 uses torch autocast in both (BatchNorm and the fp32 master weights stay fp32), rather than DeepSpeed's
bf16 mode, which casts every parameter.
"""

import contextlib
import copy
import hashlib
import os
import re
import sys
from typing import Any, ContextManager, Protocol, Tuple

import torch
from torch.nn.parallel import DistributedDataParallel

from dfdtrain.data.storage import cache_root
from dfdtrain.core.errors import DfdError, one_line
from dfdtrain.core.fileio import atomic_open, load_plain, loads_untrusted_json
from dfdtrain.core.devices import autocast
from dfdtrain.core.registry import Registry
from dfdtrain.models.base_identity import load_trained_tensors, trained_names

ENGINES = Registry("engine")


class Engine(Protocol):
    """What the training loop (``Trainer``, ``save_checkpoint``, ``load_checkpoint``) uses of an engine. An engine
    is registered in ``ENGINES`` under its ``train.engine`` name and built by ``build_engine`` as
    ``cls(model, optimizer, scheduler, train, context, batch_size)``: it moves ``model`` to ``context.device``,
    wraps it for the process group, and owns the optimizer and learning-rate schedule steps from then on."""

    name: str  # its ENGINES name (report.json's "engine")
    module: torch.nn.Module  # the detector itself: its state_dict and buffers are what a checkpoint holds
    model: Any  # what the forward pass runs (the module, DDP or DeepSpeed around it): train() / eval() on it
    optimizer: Any  # the optimizer (DeepSpeed's wraps torch's): the fine-tuning phases set its param_groups' lr

    def micro_step(self) -> ContextManager:
        """The context of one micro-batch's forward and backward: gradients are synced over the ranks only on the
        last micro-batch of an optimizer step (``train.grad_accum``)."""
        ...

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """(video_logits [B], frame_logits [B, T]) of the model, under autocast of ``train.precision``."""
        ...

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradients of one micro-batch's ``loss`` (the engine divides by the accumulation)."""
        ...

    def step(self) -> bool:
        """After every micro-batch: at an accumulation boundary, clip the gradients (``train.grad_clip``), step the
        optimizer and the schedule; True when it stepped."""
        ...

    def save(self, folder: str, state: dict, trained_only: bool = False) -> None:
        """Write the weights, optimizer and schedule, and the loop's ``state``, into ``folder`` (every rank calls
        it; each writes what it holds). ``trained_only``: of the weights, only ``trained_names`` (a frozen-base
        run: the rest is rebuilt from the base)."""
        ...

    def load(self, folder: str, trained_only: bool = False) -> dict:
        """Restore what ``save`` wrote into ``folder``; returns the loop's state. ``trained_only``: the weights
        there must be exactly the module's ``trained_names`` (the others stay as built)."""
        ...


def _save_torch(obj, path):
    with atomic_open(path, "wb") as handle:
        torch.save(obj, handle)


@ENGINES.register("ddp")
class DDPEngine:
    """The ``Engine`` over torch's DistributedDataParallel (none for one process)."""

    name = "ddp"

    def __init__(self, model, optimizer, scheduler, train, context, batch_size):
        self.module = model.to(context.device)
        self.optimizer, self.scheduler = optimizer, scheduler
        self.train_config, self.context = train, context
        self.model = self.module
        if context.world_size > 1:
            device_ids = [context.device.index] if context.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.module, device_ids=device_ids)
        self.micro_steps = 0

    def _at_boundary(self):
        return (self.micro_steps + 1) % self.train_config.grad_accum == 0

    def micro_step(self):
        if isinstance(self.model, DistributedDataParallel) and not self._at_boundary():
            return self.model.no_sync()  # accumulate locally; all-reduce once on the last micro-batch
        return contextlib.nullcontext()

    def forward(self, frames, mask):
        with autocast(self.context.device, self.train_config.precision):
            return self.model(frames, mask)

    def backward(self, loss):
        (loss / self.train_config.grad_accum).backward()

    def step(self):
        boundary = self._at_boundary()
        self.micro_steps += 1
        if not boundary:
            return False
        if self.train_config.grad_clip:
            torch.nn.utils.clip_grad_norm_(self.module.parameters(), self.train_config.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return True

    def save(self, folder, state, trained_only=False):
        if self.context.is_main:
            weights = self.module.state_dict()
            if trained_only:
                trained = trained_names(self.module)
                weights = {name: value for name, value in weights.items() if name in trained}
            _save_torch({"model": weights, "optimizer": self.optimizer.state_dict(),
                         "scheduler": self.scheduler.state_dict(), "state": state},
                        os.path.join(folder, "checkpoint.pt"))

    def load(self, folder, trained_only=False):
        path = os.path.join(folder, "checkpoint.pt")
        checkpoint = load_plain(path, map_location=self.context.device)
        if trained_only:
            load_trained_tensors(self.module, checkpoint["model"], path)
        else:
            self.module.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        return checkpoint["state"]


def _free_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def deepspeed_config(train, batch_size, world_size, raw_path=""):
    """The DeepSpeed JSON generated from our config; keys of a user's raw JSON override it."""
    config = {
        "train_micro_batch_size_per_gpu": batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": batch_size * train.grad_accum * world_size,
        "zero_optimization": {"stage": train.zero_stage},
        # torch's own AdamW/SGD work with ZeRO 1/2; DeepSpeed only vets its fused optimizers by name
        "zero_allow_untested_optimizer": True,
        "gradient_clipping": train.grad_clip,
        "steps_per_print": 10 ** 9,
        "wall_clock_breakdown": False,
    }
    if raw_path:
        config = _merge(config, read_raw_deepspeed_json(raw_path))
    return config


def read_raw_deepspeed_json(path):
    """``train.deepspeed_config``: a JSON object of DeepSpeed keys; anything else (a list, NaN/Infinity, nesting
    deeper than Python's parser goes, bytes that are not text) is one line naming the file."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = loads_untrusted_json(handle.read())
    except OSError as error:
        raise DfdError(f"{path}: cannot read the DeepSpeed JSON ({error.strerror or error})") from None
    except ValueError as error:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise DfdError(f"{path}: not a DeepSpeed JSON ({one_line(str(error).splitlines()[0], 200)})") from None
    if not isinstance(raw, dict):
        raise DfdError(f"{path}: a DeepSpeed JSON is an object of keys (e.g. {{\"zero_optimization\": ...}}), "
                       f"not a {type(raw).__name__}")
    return raw


def _merge(base, override):
    merged = copy.deepcopy(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


# The line DeepSpeed prints every time it loads its CPU comm op, built or not (deepspeed/comm/torch.py)
DEEPSPEED_LOAD_LINE = re.compile(r"DeepSpeed \S+ built successfully")


def extensions_root():
    """(folder, chosen_by_user): where torch JIT-builds DeepSpeed's ops for this Python environment.

    ``TORCH_EXTENSIONS_DIR`` when set; else ``<dfdtrain cache>/torch_extensions/<environment>`` (the cache is
    ``$DFDTRAIN_CACHE``, else ``~/.cache/dfdtrain``), one folder per Python environment. torch's own default
    (``~/.cache/torch_extensions/py<ver>_<cu|cpu>``) is shared by every environment of one Python version: the
    build command names the environment's torch and DeepSpeed folders, so two environments (two virtualenvs, a
    CI clone beside a checkout) rewrote each other's build.ninja and each run rebuilt the op (~45 s).
    ``<environment>`` names torch and DeepSpeed's versions (an upgrade in place builds afresh: ninja does not
    track torch's headers) and a digest of the folders and compiler the build command names.
    """
    chosen = os.environ.get("TORCH_EXTENSIONS_DIR")
    if chosen:
        return chosen, True
    import sysconfig

    import deepspeed

    named = [sys.prefix, os.path.dirname(torch.__file__), os.path.dirname(deepspeed.__file__),
             sysconfig.get_path("include", scheme="posix_prefix") or "", os.environ.get("CXX", "c++")]
    digest = hashlib.sha256("\0".join(named).encode("utf-8", "surrogateescape")).hexdigest()[:12]
    environment = (f"py{sys.version_info[0]}{sys.version_info[1]}-torch{torch.__version__}-"
                   f"deepspeed{deepspeed.__version__}-{digest}")
    return os.path.join(cache_root(), "torch_extensions", environment), False


def use_extensions_root():
    """Point torch's JIT builds at ``extensions_root()`` (sets TORCH_EXTENSIONS_DIR when it is not set, for this
    process and the processes it starts); returns (folder, chosen_by_user)."""
    folder, chosen = extensions_root()
    os.environ["TORCH_EXTENSIONS_DIR"] = folder
    return folder, chosen


def comm_op_build_folder():
    """The folder DeepSpeed is about to JIT-build its CPU communication op (``deepspeed_shm_comm``) into, or None
    when it will not build it (another accelerator, a prebuilt op, or already built there and up to date).

    DeepSpeed's TorchBackend loads the op whenever it is compatible (the CPU accelerator on Linux): from the
    wheel when it was prebuilt, else with torch's JIT loader, which builds into
    ``$TORCH_EXTENSIONS_DIR/deepspeed_shm_comm`` (``use_extensions_root`` sets it) and rebuilds only when the
    library is missing or older than its sources, or the build command changed (ninja's rules).
    """
    import deepspeed.ops
    import torch.utils.cpp_extension
    from deepspeed.accelerator import get_accelerator
    from deepspeed.git_version_info import accelerator_name, installed_ops

    builder = get_accelerator().create_op_builder("ShareMemCommBuilder")
    if builder is None or not deepspeed.ops.__compatible_ops__.get(builder.NAME, False):
        return None
    if installed_ops.get(builder.name, False) and accelerator_name == get_accelerator()._name:
        return None
    # torch's own rule for the folder (TORCH_EXTENSIONS_DIR or its per-Python/CUDA default); private, but
    # unchanged for years, and copying it would drift
    folder = torch.utils.cpp_extension._get_build_directory(builder.name, verbose=False)
    library = os.path.join(folder, builder.name + ".so")
    if not os.path.isfile(library):
        return folder
    build_file = _read_text(os.path.join(folder, "build.ninja"))
    if any(source.replace(" ", "$ ") not in build_file  # ninja escapes spaces in paths
           for source in (os.path.abspath(builder.deepspeed_src_path(path)) for path in builder.sources())):
        return folder  # built by another environment (its DeepSpeed's sources): ninja rebuilds it
    sources = [builder.deepspeed_src_path(source) for source in builder.sources()]
    newest = max((os.path.getmtime(source) for source in sources if os.path.isfile(source)), default=0)
    return folder if os.path.getmtime(library) < newest else None


def _read_text(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return ""


def announce_comm_op_build(context, chosen_by_user=True):
    """One line on rank 0 before DeepSpeed's first CPU run in this environment spends ~30 s compiling its comm
    op, silently; nothing when the op is already built."""
    if not context.is_main:
        return
    folder = comm_op_build_folder()
    if folder:
        where = os.path.dirname(folder)
        where = (f"TORCH_EXTENSIONS_DIR={where}" if chosen_by_user
                 else f"{where}; TORCH_EXTENSIONS_DIR moves it")
        print(f"building DeepSpeed's CPU communication op (once, ~30 s; cached in {where})", flush=True)


class _DropLines:
    """A text stream that passes every line on to ``stream`` except those ``pattern`` matches in full."""

    def __init__(self, stream, pattern):
        self.stream, self.pattern, self.pending = stream, pattern, ""

    def write(self, text):
        self.pending += text
        while "\n" in self.pending:
            line, _, self.pending = self.pending.partition("\n")
            if not self.pattern.fullmatch(line):
                self.stream.write(line + "\n")
        return len(text)

    def flush(self):
        self.stream.flush()

    def close_out(self):
        if self.pending:
            self.stream.write(self.pending)
            self.pending = ""
        self.stream.flush()

    def __getattr__(self, name):  # isatty, encoding, fileno...: the real stream's
        return getattr(self.stream, name)


@contextlib.contextmanager
def _without_deepspeed_load_line():
    """DeepSpeed prints "DeepSpeed deepspeed.ops.comm.deepspeed_shm_comm_op built successfully" whenever it loads
    the op, cached or not; the line that matters (``announce_comm_op_build``) is printed only when it builds."""
    filtered = _DropLines(sys.stdout, DEEPSPEED_LOAD_LINE)
    try:
        with contextlib.redirect_stdout(filtered):
            yield
    finally:
        filtered.close_out()


@ENGINES.register("deepspeed")
class DeepSpeedEngine:
    """The ``Engine`` over DeepSpeed's (ZeRO stage ``train.zero_stage``, a raw JSON's keys on top)."""

    name = "deepspeed"

    def __init__(self, model, optimizer, scheduler, train, context, batch_size):
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if context.device.type == "cuda" else "cpu")
        import deepspeed

        self.train_config, self.context = train, context
        self.config = deepspeed_config(train, batch_size, context.world_size, train.deepspeed_config)
        _, chosen_by_user = use_extensions_root()  # one build per Python environment, not one per run
        announce_comm_op_build(context, chosen_by_user)  # deepspeed.init_distributed or .initialize builds it
        with _without_deepspeed_load_line():
            if not torch.distributed.is_initialized():
                if context.world_size == 1:  # no launcher: a one-process group (else DeepSpeed looks for MPI)
                    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"),
                                        ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", str(_free_port()))):
                        os.environ.setdefault(name, value)
                deepspeed.init_distributed(dist_backend=context.backend, verbose=False)
            self.model, self.optimizer, _, self.scheduler = deepspeed.initialize(
                model=model.to(context.device), optimizer=optimizer, lr_scheduler=scheduler, config=self.config)
        self.model.checkpoint_engine = PlainLoads(self.model.checkpoint_engine)  # resume runs no code
        self.module = self.model.module

    def micro_step(self):
        return contextlib.nullcontext()  # DeepSpeed decides itself when to reduce gradients

    def forward(self, frames, mask):
        with autocast(self.context.device, self.train_config.precision):
            return self.model(frames, mask)

    def backward(self, loss):
        self.model.backward(loss)  # DeepSpeed divides by the accumulation steps itself

    def step(self):
        boundary = self.model.is_gradient_accumulation_boundary()
        self.model.step()
        return boundary

    def save(self, folder, state, trained_only=False):
        # DeepSpeed's own layout (folder/<tag>/...), so its tools (zero_to_fp32.py) can read it. Not its
        # ``latest`` file: it would name the temporary folder; save_checkpoint writes it after the rename.
        # trained_only: DeepSpeed leaves out the parameters without requires_grad (buffers stay), as
        # ``trained_names`` does
        parent, tag = os.path.split(os.path.normpath(folder))
        self.model.save_checkpoint(parent, tag=tag, client_state={"state": state}, save_latest=False,
                                   exclude_frozen_parameters=trained_only)

    def load(self, folder, trained_only=False):
        if self.model.load_universal_checkpoint() or self.model.has_moe_layers:
            # those paths call torch.load themselves, past the checkpoint engine that PlainLoads covers
            raise DfdError(f"{folder}: DeepSpeed universal and MoE checkpoints are not supported (DeepSpeed would "
                           "unpickle them without weights_only)")
        parent, tag = os.path.split(os.path.normpath(folder))
        # trained_only: the frozen parameters stay as built; the weights must be exactly the trained ones
        load = (lambda src, dst: load_trained_tensors(dst, src, folder)) if trained_only else None
        path, client_state = self.model.load_checkpoint(parent, tag=tag, custom_load_fn=load)
        if path is None:
            raise DfdError(f"{folder}: DeepSpeed found no checkpoint there")
        return client_state["state"]


class PlainLoads:
    """DeepSpeed's checkpoint engine with loads that run no code from the file (its own ``load`` unpickles
    anything): ``weights_only=True``, allowing only the value types DeepSpeed's ZeRO checkpoints hold. A file
    holding anything else is refused with one line. Saving and everything else is the wrapped engine's."""

    def __init__(self, engine):
        self.engine = engine

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def load(self, path, map_location=None):
        from deepspeed.runtime.fp16.loss_scaler import LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address

        return load_plain(path, map_location=map_location, allow=(LossScaler, ZeroStageEnum, fragment_address))


def build_engine(name, model, optimizer, scheduler, train, context, batch_size) -> Engine:
    """The engine registered as ``name`` (train.engine) around ``model``; ``batch_size`` is per rank."""
    return ENGINES.get(name)(model, optimizer, scheduler, train, context, batch_size)
