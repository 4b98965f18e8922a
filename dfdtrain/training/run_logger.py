"""Run logging for the training loop: ``metrics.jsonl``, an optional W&B run and the console (rank 0 only).

    with RunLogger(run_dir, rank, config_dict, wandb_mode="offline") as run_logger:
        bar = run_logger.progress(total=steps_per_epoch, description="epoch 1")
        ...
        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}", samples_s=f"{rate:.1f}")
        run_logger.log(step, {"loss": loss, "lr": lr, "samples_per_s": rate, **system_values(device)}, epoch=1)
        run_logger.log(step, {"val": {"video": {"auc": 0.91}}}, kind="eval", epoch=1)
        run_logger.print_eval_table(1, table_text)
        run_logger.summary({"best": {"val_video_auc": 0.91}})

Every rank creates a RunLogger and calls it the same way; only rank 0 writes files, starts W&B or prints.

Files in ``run_dir`` (rank 0):
  metrics.jsonl    one line per ``log`` call: {"kind", "step", "epoch"?, "time", **values}, values kept nested;
                   a resumed run continues the same file (``resume_step``: without the rows after its checkpoint)
  summary.json     the merged ``summary`` values (written atomically)
  wandb/           the W&B run (``wandb/offline-run-*`` when offline; ``wandb sync`` uploads it later)
  wandb-cache/ ... W&B's cache, config, data and artifact directories

W&B directories: wandb puts its run files, cache, settings, data and artifacts under the home directory
unless WANDB_DIR, WANDB_CACHE_DIR, WANDB_CONFIG_DIR, WANDB_DATA_DIR and WANDB_ARTIFACT_DIR say otherwise.
RunLogger points all five into the run directory before wandb starts, replacing values the user set: the
run directory wins, so a run is self-contained and nothing is written to the home directory (a shared
artifact cache is given up for that). ``close`` restores the previous values.

W&B session: wandb reads its environment once per process and starts one service process (wandb-core) that
inherits the environment of that moment. ``close`` therefore ends the session (``wandb.teardown``), so a
later RunLogger in the same process (tests, sequential runs) starts fresh with its own directories.

The mode is ``wandb_mode``; the trainer passes ``logger.wandb.mode`` after ``WANDB_MODE`` (which wins when set,
see ``dfdtrain.config.wandb_mode``). An offline run says in one line (rank 0, stdout) where it is written and the
``wandb sync`` command that uploads it.

Online mode without credentials (no WANDB_API_KEY / WANDB_IDENTITY_TOKEN_FILE, no netrc entry for the W&B
host), or when the server cannot be reached within ``online_init_timeout_s``, falls back to offline with one
warning (a failed attempt leaves its debug logs in ``wandb/run-*``). The API key is only ever read by wandb itself: it is never put into the config, the metrics or a
file of ours.
"""

import json
import logging
import netrc
import os
import shlex
import time
import urllib.parse

from tqdm import tqdm

from dfdtrain.core.errors import DfdError
from dfdtrain.core.fileio import write_json, write_jsonl

log = logging.getLogger(__name__)

WANDB_MODES = ("disabled", "offline", "online")
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
ROW_FIELDS = ("kind", "step", "epoch", "time")  # written by log(); a value may not use these names

# Environment variable -> folder under run_dir. WANDB_DIR is the run directory itself: wandb adds "wandb/".
WANDB_DIRECTORIES = {
    "WANDB_DIR": "",
    "WANDB_CACHE_DIR": "wandb-cache",
    "WANDB_CONFIG_DIR": "wandb-config",
    "WANDB_DATA_DIR": "wandb-data",
    "WANDB_ARTIFACT_DIR": "wandb-artifacts",
}
WANDB_MISSING = "wandb is not installed: pip install 'dfdtrain[wandb]'"


class RunLogger:
    """Metrics to ``run_dir/metrics.jsonl`` and to W&B, progress bars and eval tables; acts on rank 0 only."""

    def __init__(self, run_dir, rank, config_dict, wandb_mode="disabled", project="dfdtrain", run_name=None,
                 tags=(), group=None, job_type="train", online_init_timeout_s=20.0, resume_step=None):
        if wandb_mode not in WANDB_MODES:
            raise DfdError(f"wandb mode {wandb_mode!r}: expected one of {', '.join(WANDB_MODES)}")
        self.run_dir = os.path.abspath(os.fspath(run_dir))
        self.rank = rank
        self.is_main = rank == 0
        self.wandb_mode = wandb_mode  # the mode actually used: "online" may become "offline"
        self.wandb_run = None
        self.metrics_path = os.path.join(self.run_dir, METRICS_FILE)
        self.summary_path = os.path.join(self.run_dir, SUMMARY_FILE)
        self._summary_values = {}
        self._saved_environment = {}
        self._metrics_file = None
        self._closed = False
        if not self.is_main:
            return

        os.makedirs(self.run_dir, exist_ok=True)  # before wandb: it looks for a git repository from here
        if wandb_mode != "disabled":
            try:
                self.wandb_run = self._start_wandb(project, run_name, tags, group, job_type, config_dict,
                                                   online_init_timeout_s)
            except BaseException:
                self._restore_environment()
                raise
            if self.wandb_mode == "offline":
                print(offline_run_line(self.wandb_run), flush=True)
        if resume_step is not None:
            self._drop_rows_after(resume_step)
        self._metrics_file = open(self.metrics_path, "a", encoding="utf-8")

    def _drop_rows_after(self, step):
        """A run resumed from its checkpoint at ``step`` trains the later steps again: their rows from the killed
        run (and a line cut short by the kill) go, so metrics.jsonl holds each step once. A run that starts
        afresh (step 0) starts an empty file."""
        if not os.path.isfile(self.metrics_path):
            return
        kept = []
        with open(self.metrics_path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    row = json.loads(line)
                except ValueError:
                    continue
                if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= step:
                    kept.append(row)
        write_jsonl(self.metrics_path, kept)

    # -- W&B start -----------------------------------------------------------------------------------------

    def _start_wandb(self, project, run_name, tags, group, job_type, config_dict, online_init_timeout_s):
        self._point_wandb_directories_into_run_dir()
        try:
            import wandb
        except ImportError:
            raise DfdError(WANDB_MISSING) from None

        init_arguments = dict(project=project, name=run_name, tags=list(tags), group=group, job_type=job_type,
                              config=config_dict, dir=self.run_dir)
        if self.wandb_mode == "online" and not _wandb_credentials_available(wandb):
            log.warning("W&B: no API key (WANDB_API_KEY or a netrc entry for the W&B host); logging offline")
            self.wandb_mode = "offline"
        if self.wandb_mode == "online":
            # quiet: the "logged in as" message asks the server who we are, with its own long timeout.
            # init_timeout: wandb otherwise retries an unreachable server for 90 s.
            online_settings = wandb.Settings(quiet=True, init_timeout=online_init_timeout_s,
                                             login_timeout=online_init_timeout_s)
            try:
                return wandb.init(mode="online", settings=online_settings, **init_arguments)
            except Exception as error:  # CommError, AuthenticationError, UsageError, timeouts: all mean offline
                reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
                log.warning("W&B: online start failed (%s); logging offline", reason)
                self.wandb_mode = "offline"
        return wandb.init(mode=self.wandb_mode, settings=wandb.Settings(quiet=True), **init_arguments)

    def _point_wandb_directories_into_run_dir(self):
        for variable, folder in WANDB_DIRECTORIES.items():
            self._saved_environment[variable] = os.environ.get(variable)
            os.environ[variable] = os.path.join(self.run_dir, folder) if folder else self.run_dir

    def _restore_environment(self):
        for variable, value in self._saved_environment.items():
            if value is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = value
        self._saved_environment = {}

    # -- metrics -------------------------------------------------------------------------------------------

    def log(self, step, values, kind="train", epoch=None):
        """Append one row to metrics.jsonl (values nested) and log the flattened values to W&B at ``step``.

        ``values`` may hold numbers, strings, numpy/torch scalars and nested dicts; W&B keys join the
        nesting with "/" (``{"val": {"video": {"auc": x}}}`` -> ``val/video/auc``). Keys are used as given,
        so nest eval values under a prefix such as "val" to keep them apart from training values.
        """
        if not self.is_main:
            return
        if kind not in ("train", "eval"):
            raise ValueError(f"log kind {kind!r}: expected 'train' or 'eval'")
        clashing = sorted(set(values) & set(ROW_FIELDS))
        if clashing:
            raise ValueError(f"metric names {clashing} are reserved for the metrics.jsonl row fields")
        values = to_json_value(values)
        row = {"kind": kind, "step": int(step)}
        if epoch is not None:
            row["epoch"] = epoch
        row["time"] = time.time()
        row.update(values)
        try:
            self._metrics_file.write(json.dumps(row) + "\n")
        except OSError as error:  # a full disk: the CLI's one line names the file
            error.filename = error.filename or self.metrics_path
            raise
        self._metrics_file.flush()  # a crashed or killed job keeps every row logged so far

        if self.wandb_run is not None:
            wandb_values = flatten(values)
            if epoch is not None:
                wandb_values["epoch"] = epoch
            self.wandb_run.log(wandb_values, step=int(step))

    def summary(self, values):
        """Merge ``values`` into the run summary: ``summary.json`` and the W&B run summary (flattened keys)."""
        if not self.is_main:
            return
        values = to_json_value(values)
        _merge_nested(self._summary_values, values)
        write_json(self.summary_path, self._summary_values)
        if self.wandb_run is not None:
            for key, value in flatten(values).items():
                self.wandb_run.summary[key] = value

    # -- console -------------------------------------------------------------------------------------------

    def progress(self, total, description, enabled=True):
        """A tqdm bar over micro-batches, shown on rank 0 only (and not with ``enabled=False``, i.e. --quiet);
        the loop sets its postfix (loss, lr, samples/s)."""
        return tqdm(total=total, desc=description, unit="batch", disable=not (self.is_main and enabled),
                    dynamic_ncols=True, mininterval=0.5)

    def print_eval_table(self, epoch, metrics_table_text):
        """Print an evaluation table as one block (above any live progress bar), rank 0 only."""
        if not self.is_main:
            return
        title = f"== evaluation, epoch {epoch} =="
        tqdm.write(f"\n{title}\n{metrics_table_text.rstrip()}\n")

    # -- end -----------------------------------------------------------------------------------------------

    def close(self, summary=None, exit_code=0):
        """Write ``summary`` (if given), finish the W&B run and end the wandb session, close metrics.jsonl."""
        if self._closed:
            return
        self._closed = True
        if not self.is_main:
            return
        try:
            if summary:
                self.summary(summary)
            if self.wandb_run is not None:
                import wandb

                self.wandb_run.finish(exit_code=exit_code)
                wandb.teardown()  # stops wandb-core; the next RunLogger reads the environment afresh
        finally:
            self.wandb_run = None
            self._restore_environment()
            if self._metrics_file is not None:
                self._metrics_file.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, traceback):
        self.close(exit_code=0 if exc_type is None else 1)  # W&B marks the run failed on an exception
        return False


def offline_run_line(run):
    """The one line that says where an offline W&B run is written and how to upload it."""
    folder = run.settings.sync_dir  # run_dir/wandb/offline-run-<time>-<id>
    return f"W&B: offline run in {folder} (upload it with: wandb sync {shlex.quote(folder)})"


def system_values(device):
    """Peak GPU memory of this process in MB (``gpu_max_memory_mb``) on a CUDA device, else {}."""
    import torch

    device = torch.device(device)
    if device.type != "cuda":
        return {}
    return {"gpu_max_memory_mb": torch.cuda.max_memory_allocated(device) / 2**20}


def to_json_value(value):
    """``value`` with numpy/torch scalars and arrays turned into Python numbers and lists (dicts kept)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(key): to_json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(item) for item in value]
    if hasattr(value, "tolist"):  # numpy scalars and arrays, torch tensors (0-d ones give a plain number)
        if hasattr(value, "detach"):
            value = value.detach().cpu()
        return to_json_value(value.tolist())
    raise TypeError(f"cannot log a value of type {type(value).__name__}: {value!r}")


def flatten(values, prefix=""):
    """``{"val": {"video": {"auc": x}}}`` -> ``{"val/video/auc": x}``."""
    flat = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, prefix=name + "/"))
        else:
            flat[name] = value
    return flat


def _merge_nested(target, source):
    for key, value in source.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge_nested(target[key], value)
        else:
            target[key] = value


def _wandb_credentials_available(wandb):
    """True when wandb can find credentials: the environment, or a netrc entry for the W&B API host.

    Only presence is checked: the key is left to wandb and never copied anywhere.
    """
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    netrc_path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
    try:
        entries = netrc.netrc(netrc_path)
    except (OSError, netrc.NetrcParseError):
        return False
    base_url = os.environ.get("WANDB_BASE_URL") or wandb.Settings().base_url
    # `wandb login` writes the entry for the base URL's host; older versions wrote api.wandb.ai.
    hosts = {urllib.parse.urlsplit(base_url).netloc, "api.wandb.ai"}
    return any(entries.authenticators(host) for host in hosts)
