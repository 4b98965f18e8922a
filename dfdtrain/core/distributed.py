"""Process group set-up for torchrun, the deepspeed launcher and srun: rank, world size, device, backend.

A rank started by a launcher (torchrun, the deepspeed launcher) dies with it: torchrun starts its workers in
sessions of their own, so killing the launcher's process group (or the launcher alone, with SIGKILL) would
otherwise leave the ranks training, writing the run directory, holding its lock and the GPUs.
"""

import contextlib
import ctypes
import dataclasses
import os
import signal
import threading
import time

import torch
import torch.distributed as dist

from dfdtrain.core.errors import DfdError


@dataclasses.dataclass
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self):
        return self.rank == 0


def rank_and_world():
    """(rank, world size, local rank) of this process as its launcher set them: torchrun's and the deepspeed
    launcher's RANK, WORLD_SIZE and LOCAL_RANK; else an srun step's SLURM_PROCID, SLURM_STEP_NUM_TASKS and
    SLURM_LOCALID (a batch script outside any step is one process, although its SLURM_NTASKS counts the job's
    tasks); else (0, 1, 0). A value that is not an integer is one line naming the variable."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    elif os.environ.get("SLURM_STEP_ID") is not None and "SLURM_PROCID" in os.environ:
        names = ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID")
    else:
        return 0, 1, 0
    values = []
    for name, default in zip(names, ("0", "1", "0")):
        text = os.environ.get(name, default) or default
        try:
            values.append(int(text))
        except ValueError:
            raise DfdError(f"{name}={text!r}: not an integer (set by the launcher: torchrun or srun)") from None
    return tuple(values)


PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_launcher_checked = False


def _started_by_launcher():
    """torchrun sets TORCHELASTIC_RUN_ID, the deepspeed launcher LOCAL_RANK; a process started from a shell (or
    by a bare srun) has neither, and must outlive its parent (a nohup'ed run)."""
    return "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ


def _watch_launcher(launcher):
    while os.getppid() == launcher:
        time.sleep(1)
    os.kill(os.getpid(), signal.SIGKILL)


def die_with_launcher():
    """Make this rank die when its launcher does: the kernel's parent-death signal, plus a thread that watches
    the parent pid (the signal is armed only after the parent may already have gone, and it fires when the
    parent *thread* that started us exits; torchrun and the deepspeed launcher start ranks from their main
    thread). SIGKILL: a rank without its launcher can do nothing useful, and no handler may keep it alive.
    Decided once per process, at the first call: DeepSpeed's one-process set-up sets LOCAL_RANK itself later."""
    global _launcher_checked
    if _launcher_checked:
        return
    _launcher_checked = True
    if not _started_by_launcher():
        return
    launcher = os.getppid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the watchdog alone
        pass
    threading.Thread(target=_watch_launcher, args=(launcher,), name="dfdtrain-launcher-watchdog", daemon=True).start()


def init_distributed(device="auto"):
    """Join the process group (gloo on CPU, NCCL on GPUs); a single process needs no launcher. Rank and world
    size are ``rank_and_world()``'s; an srun step's tasks form a group only with MASTER_ADDR set (where
    init_process_group meets; torchrun and the deepspeed launcher set it). Without it each task runs alone, and
    RANK=0 WORLD_SIZE=1 tell the later readers of ``rank_and_world()`` (the data loader) so."""
    die_with_launcher()
    rank, world_size, local_rank = rank_and_world()
    if not ("RANK" in os.environ and "WORLD_SIZE" in os.environ) and "MASTER_ADDR" not in os.environ:
        if world_size > 1:
            os.environ["RANK"], os.environ["WORLD_SIZE"] = "0", "1"
        rank, world_size, local_rank = 0, 1, 0
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise DfdError("train.device is cuda but no GPU is visible")
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        device = torch.device("cuda", torch.cuda.current_device())
    else:
        device = torch.device("cpu")
    backend = "nccl" if device.type == "cuda" else "gloo"
    if world_size > 1 and not dist.is_initialized():
        os.environ.setdefault("RANK", str(rank))
        os.environ.setdefault("WORLD_SIZE", str(world_size))
        os.environ.setdefault("MASTER_PORT", "29500")
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return DistributedContext(rank, world_size, local_rank, device, backend)


def barrier():
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(value, source=0):
    """The value of rank ``source`` on every rank."""
    if not dist.is_initialized():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=source)
    return holder[0]


def raise_together(problem, source=0):
    """The "one rank tries, every rank stops" rule: ``problem`` is rank ``source``'s one-line message (or None)
    after it tried something alone (opening the run folder, writing a file); every rank raises DfdError with that
    line, so none waits forever in the next collective for a rank that stopped."""
    problem = broadcast_object(problem, source)
    if problem:
        raise DfdError(problem)


def any_rank(flag, device):
    """True on every rank when ``flag`` is true on at least one (e.g. a non-finite loss).

    ``flag`` may be a bool or a 0-d tensor on ``device``: a tensor is reduced where it is, so the host waits
    once, for the answer, and not for the flag first.
    """
    flag = torch.as_tensor(flag, device=device).float().reshape(1)
    if dist.is_initialized():
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item() > 0)


def gather_to_rank0(records):
    """Concatenate per-rank lists on rank 0 (other ranks get None); works with unequal lengths."""
    if not dist.is_initialized():
        return list(records)
    gathered = [None] * dist.get_world_size() if dist.get_rank() == 0 else None
    dist.gather_object(list(records), gathered, dst=0)
    if gathered is None:
        return None
    return [record for part in gathered for record in part]


def cleanup():
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def process_group(device="auto"):
    """``init_distributed(device)``'s context for the body, then ``cleanup()`` however the body ends: a command
    that joins the group for one job (evaluate, calibrate, protocol)."""
    context = init_distributed(device)
    try:
        yield context
    finally:
        cleanup()
