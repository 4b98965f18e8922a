"""A run's safety for real (2 gloo ranks under torchrun, real processes and signals): its ranks die with their
launcher, one run at a time writes a run directory, a crashed save's leftovers are cleared before resuming, and a
validation set of only broken videos stops every rank with one line."""

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import REPO, TESTS, environment, live_processes, torchrun, train_args, write_garbage_shard



def descendants(root, processes):
    """The pids below ``root`` in the process tree (ranks, their DataLoader workers, whatever they started)."""
    found, todo = set(), [root]
    while todo:
        parent = todo.pop()
        children = [pid for pid, (ppid, _, _) in processes.items() if ppid == parent and pid not in found]
        found.update(children)
        todo.extend(children)
    return found


def survivors(run_dir, tree):
    """Live processes that name ``run_dir`` on their command line or were in ``tree`` ({pid: start time})."""
    return {pid: cmdline for pid, (_, started, cmdline) in live_processes().items()
            if pid != os.getpid() and (str(run_dir) in cmdline or tree.get(pid) == started)}


def metrics_rows(run_dir):
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def start_torchrun(args, port):
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
               *map(str, args)]
    return subprocess.Popen(command, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)


def wait_for_training(process, run_dir, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        if any(row["kind"] == "train" for row in metrics_rows(run_dir)):
            return
        time.sleep(0.2)
    raise AssertionError(f"the run never started training: {process.communicate()[1][-3000:]}")


def error_lines(stderr):
    return [line for line in stderr.splitlines() if "dfdtrain train: error:" in line]


def no_traceback_of_ours(stderr):
    """torchrun prints its own ChildFailedError traceback; the ranks must print none (no frame of dfdtrain)."""
    return f'File "{REPO / "dfdtrain"}' not in stderr and "site-packages/dfdtrain" not in stderr


def test_killing_the_launcher_with_sigkill_kills_every_rank_and_worker(tmp_path, small_shards):
    run_dir = tmp_path / "orphans"
    launcher = start_torchrun(train_args(small_shards, run_dir, "train.engine=ddp", "train.epochs=50"), port=29761)
    tree = {}
    try:
        wait_for_training(launcher, run_dir)
        # 2 ranks, each with a DataLoader worker (data.num_workers=1); a rank between two epochs has none for a
        # moment (its workers end with the epoch and the next epoch starts new ones), so look until all 4 are seen
        deadline = time.time() + 30
        while True:
            processes = live_processes()
            tree = {pid: processes[pid][1] for pid in descendants(launcher.pid, processes)}
            if len(tree) >= 4 or time.time() > deadline:
                break
            time.sleep(0.1)
        assert len(tree) >= 4, processes
        os.killpg(launcher.pid, signal.SIGKILL)  # the launcher's group: torchrun put each rank in its own session
        launcher.wait()
        # ranks die at once (parent-death signal); their DataLoader workers notice within torch's 5 s check
        deadline = time.time() + 20
        while survivors(run_dir, tree) and time.time() < deadline:
            time.sleep(0.2)
        assert not survivors(run_dir, tree)
        assert not (run_dir / "report.json").exists()
    finally:
        for pid in survivors(run_dir, tree):
            os.kill(pid, signal.SIGKILL)
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()


def test_a_second_run_on_a_live_run_directory_is_refused_and_a_stale_lock_is_taken_over(tmp_path, small_shards):
    run_dir = tmp_path / "shared"
    # long enough (240 steps) to still be training when the two runs started beside it have been refused
    args = train_args(small_shards, run_dir, "train.engine=ddp", "train.epochs=2", "data.epoch_samples=480")
    first = start_torchrun(args, port=29762)
    try:
        wait_for_training(first, run_dir)
        owner = json.loads((run_dir / ".dfdtrain.lock").read_text())
        # the same run beside it: under torchrun (every rank stops with the one line), and as one process
        second = start_torchrun([*args, "--resume", "auto"], port=29763)
        alone = subprocess.Popen([sys.executable, *args, "--resume", "auto"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=environment())
        _, alone_stderr = alone.communicate(timeout=300)
        _, second_stderr = second.communicate(timeout=300)
        assert first.poll() is None, "the first run ended before the others were refused: the test proves nothing"
        refusal = f"{run_dir}: in use by 'train' (pid {owner['pid']} on {owner['host']}"
        lines = [line for line in alone_stderr.splitlines() if line.strip() and "[WARNING]" not in line]
        assert alone.returncode == 2 and len(lines) == 1 and refusal in lines[0], alone_stderr[-3000:]
        lines = error_lines(second_stderr)
        assert second.returncode != 0 and len(lines) == 2 and all(refusal in line for line in lines), \
            second_stderr[-3000:]
        assert no_traceback_of_ours(second_stderr), second_stderr[-3000:]

        stdout, stderr = first.communicate(timeout=600)
        assert first.returncode == 0, stderr[-3000:]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    report = json.loads((run_dir / "report.json").read_text())
    rows = metrics_rows(run_dir)
    assert sorted(row["step"] for row in rows if row["kind"] == "train") == list(range(1, report["steps"] + 1))
    assert sorted(row["epoch"] for row in rows if row["kind"] == "eval") == [1, 2]
    assert not (run_dir / ".dfdtrain.lock").exists()

    # a lock left by a process that is gone (a killed run) is taken over, with a line that says so
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / ".dfdtrain.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                                        "command": "train", "started": time.time()}))
    resumed = subprocess.run([sys.executable, *args, "--resume", "must"], capture_output=True, text=True,
                             timeout=300, env=environment())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (f"{run_dir}: took over a stale lock of 'train' (pid {dead.pid} on {socket.gethostname()}: process "
            f"{dead.pid} is not running)") in resumed.stdout
    assert "training is complete (2/2 epochs" in resumed.stdout and not (run_dir / ".dfdtrain.lock").exists()
    assert metrics_rows(run_dir) == rows  # nothing left to train: nothing written twice


DEEPSPEED_SAVE = """
import sys
from dfdtrain.config import config_from_dict
from dfdtrain.training.trainer import Trainer
from dfdtrain.testing.batches import FixedBatches

config = config_from_dict({"run_dir": sys.argv[1], "train": {"engine": "deepspeed", "device": "cpu"},
                           "model": {"backbone": "mobilenetv2_050", "head": "mean", "head_options": {"hidden": [8]}},
                           "data": {"batch_size": 4}})
trainer = Trainer(config, train_loader=FixedBatches(steps=1, rank=0, per_rank=4))
trainer.engine.save(sys.argv[1] + "/checkpoints/.tmp-last", trainer.state_dict())
"""


def test_a_crashed_saves_leftovers_are_cleared_before_resuming(tmp_path, small_shards):
    run_dir = tmp_path / "crashed"
    args = train_args(small_shards, run_dir, "train.engine=deepspeed", "train.zero_stage=1", "train.epochs=1")
    finished = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600,
                              env=environment())
    assert finished.returncode == 0, finished.stderr[-3000:]
    checkpoints = run_dir / "checkpoints"
    # what crashes leave: half-written saves, a checkpoint between its two renames (last), a second copy of
    # one that was swapped in (best), and `latest` naming a temporary folder
    (checkpoints / ".tmp-last").mkdir()
    (checkpoints / ".tmp-last" / "half.pt").write_bytes(b"x")
    (checkpoints / ".tmp-best").mkdir()
    (checkpoints / "last").rename(checkpoints / ".old-last")
    subprocess.run(["cp", "-r", checkpoints / "best", checkpoints / ".old-best"], check=True)
    (checkpoints / "latest").write_text(".tmp-last")

    resumed = subprocess.run([sys.executable, *args, "--resume", "must"], capture_output=True, text=True,
                             timeout=600, env=environment())
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (f"{run_dir}: cleaned what a crash left in checkpoints/: removed .old-best; restored last from .old-last; "
            "removed .tmp-best; removed .tmp-last; latest named '.tmp-last', now 'last'") in resumed.stdout
    assert "training is complete (1/1 epochs" in resumed.stdout
    assert sorted(path.name for path in checkpoints.iterdir() if path.name.startswith(".")) == []
    assert (checkpoints / "latest").read_text() == "last"
    # DeepSpeed's own tool finds the checkpoint through `latest`
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    assert get_fp32_state_dict_from_zero_checkpoint(str(checkpoints))
    # and training goes on from it
    more = subprocess.run([sys.executable, *args[:-1], "train.epochs=2", "--resume", "must", "--json"],
                          capture_output=True, text=True, timeout=600, env=environment())
    assert more.returncode == 0, more.stderr[-3000:]
    assert "resuming" in more.stdout and json.loads(more.stdout[more.stdout.index("{"):])["epochs_run"] == 2

    # DeepSpeed's save into the temporary folder leaves `latest` alone: only the rename's writer names a tag
    saved = subprocess.run([sys.executable, "-c", DEEPSPEED_SAVE, tmp_path / "bare"], capture_output=True,
                           text=True, timeout=600, env=environment(), cwd=TESTS)
    assert saved.returncode == 0, saved.stderr[-3000:]
    assert (tmp_path / "bare/checkpoints/.tmp-last").is_dir() and not (tmp_path / "bare/checkpoints/latest").exists()


def test_a_validation_set_of_only_broken_videos_stops_every_rank_with_one_line(tmp_path, small_shards):
    broken = tmp_path / "broken"
    broken.mkdir()
    write_garbage_shard(broken / "val-000000.tar", 4, "val")
    started = time.time()
    result = torchrun(2, *train_args(small_shards, tmp_path / "run", "train.engine=ddp", "train.epochs=1",
                                     f"data.val_shards={broken}/val-*.tar"), port=29764, timeout=300)
    lines = error_lines(result.stderr)
    assert result.returncode != 0 and len(lines) == 2, result.stderr[-3000:]
    for line in lines:
        assert "no validation video could be scored: 4 skipped (first: garbage" in line, line
        assert "undecodable" in line and line.endswith("— check data.val_shards"), line
    assert no_traceback_of_ours(result.stderr), result.stderr[-3000:]
    assert time.time() - started < 240


def single_run_args(small_shards, run_dir, *extra):
    """One process, one short epoch of 2 steps (4 s here): enough to write every file a run writes."""
    return train_args(small_shards, run_dir, "train.engine=ddp", "train.epochs=1", "data.epoch_samples=4",
                      "data.num_workers=0", *extra)


def test_a_raw_deepspeed_json_that_is_not_an_object_is_one_line(tmp_path, small_shards):
    for name, text in (("list.json", "[1, 2]"), ("nan.json", '{"gradient_clipping": NaN}'),
                       ("deep.json", "[" * 100_000 + "]" * 100_000)):
        (tmp_path / name).write_text(text)
        result = subprocess.run([sys.executable, *single_run_args(small_shards, tmp_path / "run", "train.engine=deepspeed",
                                                                  f"train.deepspeed_config={tmp_path / name}")],
                                capture_output=True, text=True, timeout=300, env=environment())
        lines = error_lines(result.stderr)
        assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
        assert f"{tmp_path / name}: " in lines[0] and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "nested too deeply" in lines[0]


def test_a_full_disk_is_one_line_and_the_report_names_only_a_best_that_exists(tmp_path, small_shards):
    """A run directory on a file system with room for one checkpoint (9 MB here) but not two: one line naming
    the folder and the space, nothing half-written left; once there is room, the run finishes and its report
    names a best epoch only beside checkpoints/best. A real tmpfs, mounted in a user namespace."""
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -rm (a private mount namespace) is not allowed here")
    disk = tmp_path / "disk"
    disk.mkdir()
    run_dir = disk / "run"
    args = single_run_args(small_shards, run_dir)
    script = f"""
set -u
mount -t tmpfs -o size=14m tmpfs {disk}
{sys.executable} {' '.join(shlex.quote(str(arg)) for arg in args)} 2>&1
echo "exit=$?"
ls -a {run_dir}/checkpoints
mount -o remount,size=200m {disk}
{sys.executable} {' '.join(shlex.quote(str(arg)) for arg in args)} --json > {tmp_path}/second.out 2>&1
echo "exit=$?"
cat {run_dir}/report.json
ls {run_dir}/checkpoints
"""
    result = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=300,
                            env=environment())
    first, _, rest = result.stdout.partition("exit=")
    code, _, rest = rest.partition("\n")
    assert code == "2", result.stdout[-3000:] + result.stderr[-2000:]
    lines = error_lines(first)
    assert len(lines) == 1 and "Traceback" not in first, first[-3000:]
    assert re.search(rf"{re.escape(str(run_dir))}/checkpoints: no space left on device \([\d.]+ MB free; checkpoint "
                     r"'last' needs about [89]\.\d MB\); free some space and run again: it resumes from checkpoints/last$",
                     lines[0]), lines[0]
    listing, _, rest = rest.partition("exit=")
    assert ".tmp-last" not in listing.split(), listing  # the partial save went, its space with it
    code, _, rest = rest.partition("\n")
    assert code == "0", (tmp_path / "second.out").read_text()[-3000:]
    report_text, _, listing = rest.rpartition("}")
    report = json.loads(report_text + "}")
    assert report["best_epoch"] == 1 and report["checkpoint"] == f"{run_dir}/checkpoints/best"
    assert {"best", "last"} <= set(listing.split()), listing


HALF_WRITE = """
import os, signal, sys
from dfdtrain.core.fileio import atomic_open
with atomic_open(sys.argv[1], "wb") as handle:
    handle.write(b"half a PNG")
    os.kill(os.getpid(), signal.SIGTERM)  # what a SIGTERM'd run does in the middle of drawing its curves
"""


def test_the_files_a_killed_write_left_are_removed_by_the_next_run(tmp_path, small_shards):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for name in ("curves.png", "report.json"):
        killed = subprocess.run([sys.executable, "-c", HALF_WRITE, run_dir / name], capture_output=True,
                                env=environment())
        assert killed.returncode == -signal.SIGTERM
    left = sorted(path.name for path in run_dir.iterdir())
    assert len(left) == 2 and all(name.endswith(".tmp") for name in left), left
    (run_dir / ".notes.tmp").write_text("a user's own file: not ours to remove")
    result = subprocess.run([sys.executable, *single_run_args(small_shards, run_dir)], capture_output=True,
                            text=True, timeout=300, env=environment())
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{run_dir}: removed what a killed write left: {', '.join(left)}" in result.stdout
    assert sorted(path.name for path in run_dir.iterdir() if path.name.endswith(".tmp")) == [".notes.tmp"]


def test_a_checkpoint_holding_something_else_is_one_line_on_resume(tmp_path, small_shards):
    """Files that load with weights_only (nothing runs) but hold something else than the run saved: one line."""
    import torch

    run_dir = tmp_path / "run"
    first = subprocess.run([sys.executable, *single_run_args(small_shards, run_dir)], capture_output=True, text=True,
                           timeout=300, env=environment())
    assert first.returncode == 0, first.stderr[-3000:]
    last = run_dir / "checkpoints" / "last"
    cases = {"checkpoint.pt": [[1, 2], {"model": {}, "optimizer": {}, "scheduler": {}, "state": {}}],
             "rng-rank0.pt": [[1]]}
    for name, values in cases.items():
        original = (last / name).read_bytes()
        for value in values:
            torch.save(value, last / name)
            resumed = subprocess.run([sys.executable, *single_run_args(small_shards, run_dir, "train.epochs=2"),
                                      "--resume", "must"], capture_output=True, text=True, timeout=300,
                                     env=environment())
            lines = error_lines(resumed.stderr)
            assert resumed.returncode == 2 and len(lines) == 1 and "Traceback" not in resumed.stderr, \
                resumed.stderr[-3000:]
            assert f"{last}: cannot resume from this checkpoint" in lines[0], lines[0]
        (last / name).write_bytes(original)
