"""What `dfdtrain train` tells people, for real: a finished run started again does nothing (early-stopped ones
too) until train.epochs is raised; curves.png after every epoch; rounded numbers on the console; one line before
DeepSpeed compiles its CPU communication op, which a user's second run loads from a folder of its Python
environment without building it; WANDB_MODE=offline; absolute paths in report.json and config.yaml; what export
says it wrote."""

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from support import EXTENSIONS, run_cli, train_tiny
from dfdtrain.core.text import format_number

UNROUNDED = re.compile(r"\d\.\d{5,}")  # e.g. 0.4444444444444444: a number printed for a machine, not a person
BUILDING = "building DeepSpeed's CPU communication op"


def png_size(path):
    """(width, height) of a PNG, from its header (which also proves it is one)."""
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", header[16:24])


def unbuilt_comm_op_cache(tmp_path):
    """A TORCH_EXTENSIONS_DIR where DeepSpeed's comm op is compiled but its library is missing: the next run
    has to build it (it only links here: a second rather than ~30 s of compiling). Empty when the other tests
    have not built the op yet (then it compiles it all)."""
    cache = tmp_path / "torch_extensions"
    if (EXTENSIONS / "deepspeed_shm_comm").is_dir():
        shutil.copytree(EXTENSIONS / "deepspeed_shm_comm", cache / "deepspeed_shm_comm")
        (cache / "deepspeed_shm_comm" / "deepspeed_shm_comm.so").unlink(missing_ok=True)
    cache.mkdir(exist_ok=True)
    return cache


def our_lines(stdout):
    """stdout without the line DeepSpeed prints itself whenever it loads its comm op."""
    return [line for line in stdout.splitlines() if not re.fullmatch(r"DeepSpeed \S+ built successfully", line)]


def snapshot(run_dir, *names):
    return {name: ((run_dir / name).read_bytes(), (run_dir / name).stat().st_mtime_ns) for name in names}


def eval_epochs(run_dir):
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [row["epoch"] for row in rows if row["kind"] == "eval"]


def test_console_numbers_are_rounded_for_people():
    assert format_number(0.4444444444444444) == "0.4444"
    assert format_number(0.69314718) == "0.6931" and format_number(1.0) == "1.0000"
    assert format_number(12.345678) == "12.3457" and format_number(0.0) == "0.0000"
    assert format_number(3.2e-05) == "3.2e-05" and format_number(1234567.8) == "1.235e+06"
    assert format_number(4) == "4" and format_number(None) == "n/a"
    assert format_number(torch.tensor(0.123456).item()) == "0.1235"


def test_finished_run_started_again_does_nothing_until_epochs_are_raised(tmp_path, small_shards, monkeypatch):
    """DeepSpeed on a CPU: the first run says it builds the comm op (then it is cached and nothing is said),
    draws curves.png; started again it says it is complete and touches nothing (no W&B run even when asked
    for one); with train.epochs raised it trains the extra epoch and redraws the curves."""
    cache = unbuilt_comm_op_cache(tmp_path)
    for name, value in (("DS_ACCELERATOR", "cpu"), ("TORCH_EXTENSIONS_DIR", str(cache)), ("OMP_NUM_THREADS", "1")):
        monkeypatch.setenv(name, value)  # train_tiny's process inherits them
    run_dir = tmp_path / "run"
    settings = ("train.engine=deepspeed", "train.log_every=1")

    first = train_tiny(run_dir, small_shards, *settings)
    assert first.returncode == 0, first.stderr[-3000:]
    building = [line for line in first.stdout.splitlines() if line.startswith(BUILDING)]
    assert building == [f"{BUILDING} (once, ~30 s; cached in TORCH_EXTENSIONS_DIR={cache})"], first.stdout
    assert first.stdout.index(BUILDING) < first.stdout.index("== evaluation, epoch 1 ==")
    assert (cache / "deepspeed_shm_comm" / "deepspeed_shm_comm.so").is_file()
    assert re.search(r"best val video AUC (\d\.\d{4}|n/a) \(epoch 1\)", first.stdout), first.stdout
    assert png_size(run_dir / "curves.png") == (1210, 825)
    files = ("report.json", "metrics.jsonl", "curves.png", "config.yaml")
    before = snapshot(run_dir, *files)

    again = train_tiny(run_dir, small_shards, *settings, "logger.wandb.mode=offline", "optim.lr=0.5")
    assert again.returncode == 0, again.stderr[-3000:]
    best = json.loads((run_dir / "report.json").read_text())["val"]["loss"]
    assert our_lines(again.stdout) == [f"{run_dir}: training is complete (1/1 epochs; best val_loss "
                                       f"{format_number(best)} at epoch 1); nothing to do (raise train.epochs to "
                                       "train on)"], again.stdout
    assert snapshot(run_dir, *files) == before  # report.json, metrics, curves and the run's config untouched
    assert not (run_dir / "wandb").exists()
    written = json.loads((run_dir / "report.json").read_text())
    (run_dir / "report.json").unlink()  # killed between its last checkpoint and its report: the rerun writes it
    assert train_tiny(run_dir, small_shards, *settings).returncode == 0
    assert json.loads((run_dir / "report.json").read_text())["val"] == written["val"]

    more = train_tiny(run_dir, small_shards, *settings, "train.epochs=2")
    assert more.returncode == 0, more.stderr[-3000:]
    assert "resuming" in more.stdout and BUILDING not in more.stdout
    report = json.loads((run_dir / "report.json").read_text())
    assert report["epochs_run"] == 2 and report["stopped_early"] is False
    assert eval_epochs(run_dir) == [1, 2]
    assert (run_dir / "curves.png").read_bytes() != before["curves.png"][0]  # redrawn with epoch 2
    assert not list(run_dir.glob(".curves.png*"))  # written atomically: no temporary file left
    for result in (first, again, more):
        assert not UNROUNDED.findall(result.stdout), result.stdout


def test_early_stopped_run_is_complete_also_from_an_older_checkpoint(tmp_path, small_shards):
    """Stopped early after epoch 2 of 3 (a metric that never improves, patience 1): started again it does not
    train epoch 3, neither with its checkpoint nor with one written before TrainState had ``stopped_early``."""
    run_dir = tmp_path / "run"
    settings = ("train.epochs=3", "train.patience=1", "train.early_stopping_metric=videos",
                "train.early_stopping_mode=max")
    first = train_tiny(run_dir, small_shards, *settings)
    assert first.returncode == 0, first.stderr[-3000:]
    assert re.search(r"^early stopping: videos has not improved for 1 epochs \(best \d+ at epoch 1\)$",
                     first.stdout, re.MULTILINE), first.stdout
    report = json.loads((run_dir / "report.json").read_text())
    assert report["stopped_early"] is True and report["epochs_run"] == 2
    before = snapshot(run_dir, "report.json", "metrics.jsonl")

    checkpoint_path = run_dir / "checkpoints" / "last" / "checkpoint.pt"
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    assert checkpoint["state"]["stopped_early"] is True
    again = train_tiny(run_dir, small_shards, *settings)
    del checkpoint["state"]["stopped_early"]  # as an older version wrote it
    torch.save(checkpoint, checkpoint_path)
    older = train_tiny(run_dir, small_shards, *settings)
    for result in (again, older):
        assert result.returncode == 0, result.stderr[-3000:]
        assert re.fullmatch(rf"{run_dir}: training is complete \(stopped early after 2/3 epochs; best videos \d+ at "
                            r"epoch 1\); nothing to do \(raise train.patience to train on\)\n", result.stdout), \
            result.stdout
    assert snapshot(run_dir, "report.json", "metrics.jsonl") == before
    for result in (first, again, older):
        assert not UNROUNDED.findall(result.stdout), result.stdout


def test_curves_png_shows_a_long_run(tmp_path):
    """curves.png from a metrics.jsonl of 3 epochs x 40 steps with warmup, a frozen backbone in epoch 1 and an
    epoch without AUC: drawn, at its full size, with nothing left behind."""
    from dfdtrain.training.curves import write_curves

    rows = []
    for step in range(1, 121):
        epoch = (step - 1) // 40 + 1
        lr = 1e-3 * min(1.0, step / 10) * (1 - step / 130)
        rows.append({"kind": "train", "step": step, "epoch": epoch, "time": step, "loss": 0.7 - 0.002 * step
                     + 0.05 * ((step * 7919) % 13 - 6) / 6, "lr": lr, "lr_backbone": 0.0 if epoch == 1 else lr / 10})
        if step % 40 == 0:
            auc = None if epoch == 1 else 0.6 + 0.1 * epoch
            rows.append({"kind": "eval", "step": step, "epoch": epoch, "time": step,
                         "val": {"loss": 0.69 - 0.05 * epoch, "video": {"head": {"auc": auc}},
                                 "frame": {"auc": None if auc is None else auc - 0.05}}})
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows) + '{"kind": "tr')
    path = write_curves(tmp_path, title="long run")
    assert png_size(tmp_path / "curves.png") == (1210, 825) and str(path).endswith("curves.png")
    assert sorted(item.name for item in tmp_path.iterdir()) == ["curves.png", "metrics.jsonl"]


def test_train_warns_once_when_validation_shares_videos_with_training(tmp_path, small_shards):
    """data.val_shards that include the training shards: one WARNING line at the start, naming how many videos
    and groups are shared with an example of each; training goes on (and with apart shards nothing is said)."""
    rows = [json.loads(line) for line in (small_shards.parent / "m.jsonl").read_text().splitlines() if line.strip()]
    train = [row for row in rows if isinstance(row, dict) and row.get("split") == "train"]
    keys, groups = sorted(row["key"] for row in train), sorted({row["group"] for row in train})
    result = train_tiny(tmp_path / "run", small_shards, f"data.val_shards={small_shards}/*.tar",
                        "data.epoch_samples=2")
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("WARNING: data.val_shards")]
    assert warnings == [
        f"WARNING: data.val_shards ({small_shards}/*.tar) shares {len(keys)} videos (e.g. {keys[0]!r}) and "
        f"{len(groups)} groups (e.g. {groups[0]!r}) with data.train_shards ({small_shards}/train-*.tar): validation "
        "metrics, early stopping, the best checkpoint and its calibration are then measured on training data"], \
        result.stderr[-3000:]

    from dfdtrain.commands.train import validation_overlap
    from dfdtrain.config import DataConfig

    assert validation_overlap(DataConfig(train_shards=f"{small_shards}/train-*.tar",
                                         val_shards=f"{small_shards}/val-*.tar")) is None


# -- a user's second DeepSpeed run on one machine (issue: the comm op was rebuilt by every run) ----------------

FOLDERS = """import torch.utils.cpp_extension as cpp
import dfdtrain.training.engines as engines
print(engines.extensions_root()[0] if hasattr(engines, "extensions_root") else "-")  # versions before it: none
print(cpp._get_build_directory("deepspeed_shm_comm", False))"""
DEEPSPEED_LOAD_LINE = re.compile(r"DeepSpeed \S+ built successfully")


def user_environment(home):
    """A user's shell: no TORCH_EXTENSIONS_DIR or dfdtrain cache set, a HOME of their own, WANDB_MODE=offline."""
    environment = {name: value for name, value in os.environ.items()
                   if name not in ("TORCH_EXTENSIONS_DIR", "DFDTRAIN_CACHE", "XDG_CACHE_HOME")
                   and not name.startswith("WANDB_")}
    return {**environment, "HOME": str(home), "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
            "WANDB_MODE": "offline"}


def train_here(cwd, environment, shards):
    """`dfdtrain train` of a tiny DeepSpeed run in ``cwd`` with the relative run_dir ``run``; (result, seconds)."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "dfdtrain", "train", "--quiet", "run_dir=run", "train.engine=deepspeed",
         f"data.train_shards={shards}/train-*.tar", f"data.val_shards={shards}/val-*.tar",
         "model.backbone=mobilenetv2_050", "model.head=gru", "model.head_options={hidden_size: 16, hidden: [8]}",
         "clip.sampler.num_frames=4", "clip.image_size=48", "data.decoder=pyav", "data.batch_size=2",
         "data.num_workers=0", "data.epoch_samples=8", "train.epochs=1"],
        capture_output=True, text=True, timeout=600, cwd=cwd, env=environment)
    return result, time.monotonic() - started


@pytest.fixture(scope="module")
def user_runs(tmp_path_factory, small_shards):
    """Two `dfdtrain train` runs of one DeepSpeed CPU run, as a user starts them (``user_environment``), where
    torch's shared extensions folder (~/.cache/torch_extensions/py<ver>_<cu>) holds the comm op of another Python
    environment, as a second checkout or virtualenv leaves it; its build command names that environment's
    DeepSpeed and torch, so a run of this environment there rebuilt the op and the other's next run rebuilt it
    back. Ours is per environment: pre-filled with the op the other DeepSpeed tests built here (when they did),
    so no test compiles it again."""
    root = tmp_path_factory.mktemp("user")
    home = root / "home"
    home.mkdir()
    environment = user_environment(home)
    folders = subprocess.run([sys.executable, "-c", FOLDERS], capture_output=True, text=True, env=environment,
                             timeout=300)
    assert folders.returncode == 0, folders.stderr[-3000:]
    ours, shared = map(Path, folders.stdout.split()[-2:])
    built = EXTENSIONS / "deepspeed_shm_comm"
    if (built / "deepspeed_shm_comm.so").is_file() and ours != Path("-"):
        shutil.copytree(built, ours / "deepspeed_shm_comm")
    shared.mkdir(parents=True, exist_ok=True)
    (shared / "build.ninja").write_text(f"# deepspeed_shm_comm of another environment\ncflags = -I/other/venv/lib/"
                                        f"python3.11/site-packages/deepspeed/ops/csrc/cpu/includes\n")
    foreign = {path.name: path.read_bytes() for path in shared.iterdir()}
    first, first_seconds = train_here(root, environment, small_shards)
    assert first.returncode == 0, first.stderr[-3000:]
    library = ours / "deepspeed_shm_comm" / "deepspeed_shm_comm.so"
    built_at = library.stat().st_mtime_ns if library.is_file() else None
    second, second_seconds = train_here(root, environment, small_shards)
    assert second.returncode == 0, second.stderr[-3000:]
    return {"root": root, "run_dir": root / "run", "first": first, "second": second, "seconds": second_seconds,
            "home": home, "library": library, "built_at": built_at, "shared": shared, "foreign": foreign}


def test_a_second_deepspeed_train_loads_the_comm_op_without_building_it(user_runs):
    """The op is built once per Python environment, in a folder of its own, and loaded from there by every later
    run, which says nothing about it (DeepSpeed's own "built successfully" line, printed on every load, is
    dropped); torch's folder, shared by every environment, is left alone."""
    first, second = user_runs["first"], user_runs["second"]
    for result in (first, second):
        assert not [line for line in result.stdout.splitlines() if DEEPSPEED_LOAD_LINE.fullmatch(line)], \
            result.stdout
    assert len(second.stdout.splitlines()) == 1 and second.stdout.startswith("run: training is complete"), \
        second.stdout
    shared = user_runs["shared"]
    assert {path.name: path.read_bytes() for path in shared.iterdir()} == user_runs["foreign"]
    assert str(user_runs["library"]).startswith(str(user_runs["home"] / ".cache/dfdtrain/torch_extensions/py"))
    building = [line for line in first.stdout.splitlines() if line.startswith(BUILDING)]
    assert building in ([], [f"{BUILDING} (once, ~30 s; cached in {user_runs['library'].parent.parent}; "
                              "TORCH_EXTENSIONS_DIR moves it)"]), first.stdout
    assert user_runs["built_at"] and user_runs["library"].stat().st_mtime_ns == user_runs["built_at"]  # not rebuilt
    assert user_runs["seconds"] < 20, f"a finished run took {user_runs['seconds']:.1f} s to say so"


def test_wandb_mode_offline_in_the_environment_writes_an_offline_run(user_runs):
    """WANDB_MODE=offline with the config's default (logger.wandb.mode: disabled): an offline run, and one line
    naming its folder and the command that uploads it. The saved config says what the run used."""
    run_dir = user_runs["run_dir"].resolve()
    lines = [line for line in user_runs["first"].stdout.splitlines() if line.startswith("W&B")]
    offline_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 1, user_runs["first"].stdout
    offline_run = offline_runs[0]
    assert list(offline_run.glob("run-*.wandb"))
    assert lines == [f"W&B: offline run in {offline_run} (upload it with: wandb sync {offline_run})"]
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["logger"]["wandb"]["mode"] == "offline"
    assert not [line for line in user_runs["second"].stdout.splitlines() if line.startswith("W&B")]


def test_report_and_config_name_the_run_by_absolute_paths(user_runs):
    """run_dir=run (relative): report.json's checkpoint and config.yaml's run_dir are the absolute folders."""
    run_dir = user_runs["run_dir"].resolve()
    report = json.loads((run_dir / "report.json").read_text())
    assert report["checkpoint"] == str(run_dir / "checkpoints" / "best")
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["run_dir"] == str(run_dir)


def test_export_names_the_files_it_wrote(user_runs):
    root = user_runs["root"]
    exported = run_cli("export", "--checkpoint", "run/checkpoints/best", "--out", "bundle", cwd=root)
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert exported.stdout.splitlines() == [
        "wrote bundle/model.safetensors and bundle/detector.json (the bundle: predict --checkpoint bundle)"]
    assert {path.name for path in (root / "bundle").iterdir()} >= {"model.safetensors", "detector.json"}
