"""The run directory one training run owns (``run_dir``, else ``runs/<name>``): its lock, the resolved
``config.yaml``, ``report.json``, ``curves.png`` and the ``checkpoints/`` the Trainer reads back. Rank 0 alone
touches the directory (locks it, clears what a crash left, writes its files); when it cannot, every rank stops
together with its one line (``raise_together``), so no rank waits forever for one that stopped.

    directory = RunDirectory(config, context)
    lock = directory.open()                  # rank 0: the lock (release it at the end); other ranks: None
    directory.write_config(resolved_config)  # config.yaml, as trained
    directory.redraw_curves(title)           # curves.png from metrics.jsonl; a failure is a warning
    directory.write_report(report) / directory.read_report()
"""

import logging
import os

from dfdtrain.config import save_config
from dfdtrain.core.distributed import raise_together
from dfdtrain.core.errors import DfdError
from dfdtrain.core.fileio import read_json, remove_stale_temporaries, write_json
from dfdtrain.core.locks import DirectoryLock
from dfdtrain.data.loading.sources import source_report, synthetic_report
from dfdtrain.models.bundle import SETTINGS_FILE
from dfdtrain.training.checkpoint import clean_checkpoints, find_checkpoint
from dfdtrain.training.curves import CURVES_FILE, write_curves

log = logging.getLogger(__name__)
REPORT_FILE = "report.json"


class RunDirectory:
    """The run directory of ``config`` (``config.run_dir``, else ``runs/<config.name>``) as rank
    ``context.rank`` sees it; ``path`` is the folder, as the config names it."""

    def __init__(self, config, context):
        self.path = config.run_dir or os.path.join("runs", config.name)
        self.context = context

    def open(self):
        """Rank 0 locks the run directory (one run writes it at a time) and clears what a crashed save left in
        its checkpoints; every rank learns the outcome, so all ranks of a refused run stop together with the one
        line. Returns the lock (rank 0) or None."""
        lock, problem = None, None
        if self.context.is_main:
            try:
                lock = DirectoryLock(self.path, "train").acquire()
                if lock.takeover_message():
                    print(lock.takeover_message())
                cleaned = clean_checkpoints(self.path) + [
                    f"removed {name}" for name in remove_stale_temporaries(os.path.join(self.path, "checkpoints"))]
                if cleaned:
                    print(f"{self.path}: cleaned what a crash left in checkpoints/: {'; '.join(cleaned)}")
                half_written = remove_stale_temporaries(self.path)  # a killed run's curves.png, report.json...
                if half_written:
                    print(f"{self.path}: removed what a killed write left: {', '.join(half_written)}")
            except (DfdError, OSError) as error:
                problem = str(error)
                if lock is not None:
                    lock.release()
                    lock = None
        raise_together(problem)
        return lock

    def write_config(self, config):
        """``config.yaml`` (rank 0): the config the run trains with; every rank stops when it cannot be written."""
        problem = None
        if self.context.is_main:
            try:
                save_config(config, os.path.join(self.path, "config.yaml"))
            except (DfdError, OSError) as error:
                problem = f"{self.path}: cannot write config.yaml ({error})"
        raise_together(problem)

    def redraw_curves(self, title):
        """Redraw curves.png from metrics.jsonl (rank 0). A plot that fails is a warning: it must not stop the
        run, and rank 0 failing alone would leave the other ranks waiting."""
        try:
            write_curves(self.path, title=title)
        except Exception as error:  # noqa: BLE001 (anything matplotlib or the file system raises)
            log.warning("%s: %s not redrawn (%s: %s)", self.path, CURVES_FILE, type(error).__name__, error)

    def read_report(self):
        """``report.json`` as a finished run left it, or None when there is none."""
        path = os.path.join(self.path, REPORT_FILE)
        return read_json(path) if os.path.isfile(path) else None

    def write_report(self, report):
        write_json(os.path.join(self.path, REPORT_FILE), report)

    def checkpoint(self, tag):
        """The complete checkpoint folder ``checkpoints/<tag>``, or None (``find_checkpoint``)."""
        return find_checkpoint(self.path, tag)

    def best_calibration(self):
        """The calibration stored with the checkpoint evaluate would load (best, else last), or None."""
        checkpoint = self.checkpoint("best") or self.checkpoint("last")
        path = os.path.join(checkpoint, SETTINGS_FILE) if checkpoint else None
        return read_json(path).get("calibration") if path and os.path.isfile(path) else None


def run_report(trainer, last_metrics, stopped_early, seconds):
    """``report.json`` of ``trainer``'s run (rank 0): the best epoch's validation (the last one's without a best
    checkpoint), the checkpoint to evaluate, skipped samples, storage retries and throughput."""
    state = trainer.state
    # a best epoch is named only with its checkpoint: a save that failed (a full disk) leaves it in memory only
    best_checkpoint = find_checkpoint(trainer.run_dir, "best")
    best = (state.best_metrics if best_checkpoint else None) or last_metrics or {}
    skipped = trainer.train_loader.skipped + trainer.val_loader.skipped
    seconds_training = max(state.train_seconds, 1e-9)
    return {
        "name": trainer.config.name,
        "engine": trainer.engine.name,
        "world_size": trainer.context.world_size,
        "device": str(trainer.context.device),
        "epochs_run": state.epoch,
        "steps": state.step,
        "stopped_early": stopped_early,
        "checkpoint": _absolute(best_checkpoint or find_checkpoint(trainer.run_dir, "last")),
        "best_epoch": state.best_epoch if best_checkpoint else None,
        "calibration": trainer.directory.best_calibration(),
        "early_stopping_metric": trainer.config.train.early_stopping_metric,
        "val": {"loss": best.get("loss"), "video": (best.get("video") or {}).get("head") or {},
                "video_rules": best.get("video"), "frame": best.get("frame")},
        "last_val": last_metrics,
        "skipped": {"train": len(trainer.train_loader.skipped), "val": len(trainer.val_loader.skipped),
                    "samples": skipped[:100]},
        # transient storage faults (remote shards) that were retried, by kind, over every rank
        "storage_retries": {"total": sum(trainer.storage_retries.values()), **dict(trainer.storage_retries)},
        # data.train_sources: each source's samples and share of the last epoch trained, over every rank
        **({"train_sources": source_report(trainer.train_loader)} if source_report(trainer.train_loader) else {}),
        **synthetic_report(trainer.train_loader),  # the synthesis sources' fakes, all sources together
        "throughput": {"samples_per_s": state.samples / seconds_training,
                       "frames_per_s": state.samples * trainer.clip.sampler.num_frames / seconds_training},
        "wall_seconds": round(seconds, 1),
    }


def skipped_summary(skipped):
    """'N skipped (first: KEY: REASON (detail); ...)' for skip records, or why there were none."""
    if not skipped:
        return "the validation shards hold no video"
    first = "; ".join(f"{item['key']}: {item['reason']}" + (f" ({item['detail']})" if item.get("detail") else "")
                      for item in skipped[:3])
    return f"{len(skipped)} skipped (first: {first})"


def _absolute(path):
    return os.path.abspath(path) if path else path
