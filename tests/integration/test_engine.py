"""The training engine for real: 2-process gloo runs of DeepSpeed (ZeRO 0/1/2) and DDP, frozen weights
under ZeRO, resume after SIGKILL, the NaN guard and a W&B offline run of `dfdtrain train`."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from support import ENGINE_JOB, SMALL_CLIP, environment, live_processes, make_synth_shards, run_cli, torchrun, train_args
from dfdtrain.core.errors import DfdError



def engine_job(tmp_path, engine, zero, nproc, port, frozen_epochs=0, steps=3):
    prefix = tmp_path / f"{engine}-z{zero}-n{nproc}-f{frozen_epochs}"
    result = torchrun(nproc, ENGINE_JOB, engine, zero, steps, prefix, frozen_epochs, port=port)
    assert result.returncode == 0, result.stderr[-4000:]
    return [torch.load(f"{prefix}.rank{rank}.pt") for rank in range(nproc)]


@pytest.fixture(scope="module")
def single_process_reference(tmp_path_factory):
    return engine_job(tmp_path_factory.mktemp("reference"), "ddp", 0, 1, port=29611)[0]


def assert_same_weights(first, second, atol=2e-5):
    for name, value in first.items():
        if value.is_floating_point():
            assert torch.allclose(value, second[name], atol=atol, rtol=1e-4), name


@pytest.mark.parametrize("engine, zero, port", [("ddp", 0, 29621), ("deepspeed", 0, 29622), ("deepspeed", 1, 29623),
                                                ("deepspeed", 2, 29624)])
def test_two_ranks_match_each_other_and_one_process_with_the_same_global_batch(
        tmp_path, single_process_reference, engine, zero, port):
    ranks = engine_job(tmp_path, engine, zero, 2, port)
    assert_same_weights(ranks[0]["after"], ranks[1]["after"], atol=0)  # bitwise equal across ranks
    assert_same_weights(ranks[0]["after"], single_process_reference["after"])
    moved = [name for name, value in ranks[0]["after"].items()
             if value.is_floating_point() and not torch.equal(value, ranks[0]["before"][name])]
    assert any(name.startswith("backbone.") for name in moved) and any(name.startswith("head.") for name in moved)


@pytest.mark.parametrize("zero, port", [(1, 29631), (2, 29632)])
def test_frozen_backbone_stays_frozen_under_zero(tmp_path, zero, port):
    ranks = engine_job(tmp_path, "deepspeed", zero, 2, port, frozen_epochs=1)
    before, after = ranks[0]["before"], ranks[0]["after"]
    backbone = [name for name in before if name.startswith("backbone.") and before[name].is_floating_point()]
    assert backbone and all(torch.equal(before[name], after[name]) for name in backbone)  # BN stats too
    assert any(not torch.equal(before[name], after[name]) for name in before if name.startswith("head."))


def written_rows(path):
    """The rows of a jsonl file another process is writing (a line it is still writing is left out)."""
    rows = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def kill_after_step(command, run_dir, step, port):
    """Start a 2-rank training, SIGKILL it (launcher and ranks) once step ``step`` is logged; returns the
    steps of the checkpoint it leaves (``checkpoints/last``)."""
    errors = run_dir.parent / f"{run_dir.name}-killed-at-{step}.stderr"  # why, should it end by itself
    with open(errors, "w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                                    f"--master_port={port}", *command], env=environment(), stdout=subprocess.DEVNULL,
                                   stderr=handle, start_new_session=True)
    deadline = time.time() + 300
    metrics = run_dir / "metrics.jsonl"
    while time.time() < deadline and process.poll() is None:
        if any(row["kind"] == "train" and row["step"] >= step for row in written_rows(metrics)):
            break
        time.sleep(0.05)
    assert process.poll() is None, f"the run ended before it could be killed: {errors.read_text()[-3000:]}"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    deadline = time.time() + 15  # the ranks die with their launcher; the next start must not find them alive
    while any(str(run_dir) in command for _, _, command in live_processes().values()):
        assert time.time() < deadline, "a rank outlived its launcher"
        time.sleep(0.1)


def train_losses(run_dir):
    """{step: loss} from metrics.jsonl, where each step has one row: a resumed run drops the killed run's rows
    after its checkpoint (it trains those steps again)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [row["step"] for row in rows if row["kind"] == "train"]
    assert steps == sorted(set(steps)), steps
    return {row["step"]: row["loss"] for row in rows if row["kind"] == "train"}


def validations(run_dir):
    """{step: [validation metrics of each eval row at that step]} from metrics.jsonl."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    found = {}
    for row in rows:
        if row["kind"] == "eval":
            found.setdefault(row["step"], []).append(row["val"])
    return found


@pytest.fixture(scope="module")
def spread_shards(tmp_path_factory):
    """16 generated clips, half of them for validation, one or two clips a shard: 6 val shards, so that with 2
    ranks x 2 loader workers (val shard i goes to slot i mod 4) rank 1 scores 3 of the 8 videos."""
    shards = make_synth_shards(tmp_path_factory.mktemp("spread"), count=16, frames=8, val_fraction=0.5,
                               target_bytes=12_000, seed=3)
    assert len(list(shards.glob("val-*.tar"))) >= 3, "rank 1 would validate nothing"
    return shards


def test_resume_after_sigkill_at_any_step_is_exact(tmp_path, spread_shards):
    """2 ranks with loader workers, augmentation, shuffle buffers and dropout, killed with SIGKILL mid-epoch three
    times (a checkpoint every step, so it resumes wherever the kill fell): every step's loss and every epoch's
    validation (both ranks score videos; their BatchNorm statistics are per rank under DeepSpeed) equal those
    of the uninterrupted run."""
    settings = ("train.engine=deepspeed", "train.zero_stage=1", "train.checkpoint_every=1", "data.num_workers=2",
                "data.augment.enabled=true", "data.shuffle_buffer=4")
    reference = torchrun(2, *train_args(spread_shards, tmp_path / "reference", *settings), port=29641)
    assert reference.returncode == 0, reference.stderr[-4000:]
    expected = json.loads((tmp_path / "reference/report.json").read_text())
    assert expected["steps"] == 12  # 3 epochs of 4 steps: the kills below fall inside epochs 1, 2 and 3

    run_dir = tmp_path / "killed"
    command = train_args(spread_shards, run_dir, *settings)
    for number, step in enumerate((2, 6, 11)):
        kill_after_step(command + (["--resume", "must"] if number else []), run_dir, step, port=29642 + number)
        assert not (run_dir / "report.json").exists()
    resumed = torchrun(2, *command, "--resume", "must", port=29646)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resuming" in resumed.stdout

    assert train_losses(run_dir) == pytest.approx(train_losses(tmp_path / "reference"), abs=1e-6)
    report = json.loads((run_dir / "report.json").read_text())
    assert report["steps"] == expected["steps"] and report["epochs_run"] == expected["epochs_run"]
    for metric in ("auc", "log_loss"):
        assert report["val"]["video"][metric] == pytest.approx(expected["val"]["video"][metric], abs=1e-6), metric
        assert report["val"]["frame"][metric] == pytest.approx(expected["val"]["frame"][metric], abs=1e-6), metric
    assert report["val"]["loss"] == pytest.approx(expected["val"]["loss"], abs=1e-6)
    every, expected_every = validations(run_dir), validations(tmp_path / "reference")
    assert sorted(every) == sorted(expected_every) == [4, 8, 12]
    for step, found in every.items():  # a step validated twice (killed after its row, before its checkpoint): both
        uninterrupted = expected_every[step][0]
        for val in found:
            assert val["videos"] == uninterrupted["videos"] == 8, step
            assert val["loss"] == pytest.approx(uninterrupted["loss"], abs=1e-6), step
            for level, metric in (("video", "auc"), ("video", "log_loss"), ("frame", "auc"), ("frame", "log_loss")):
                ours, theirs = val[level], uninterrupted[level]
                if level == "video":
                    ours, theirs = ours["head"], theirs["head"]
                assert ours[metric] == pytest.approx(theirs[metric], abs=1e-6), (step, level, metric)

    # the checkpoint is DeepSpeed's own: its zero_to_fp32 tool rebuilds the full weights from the ZeRO shards
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    weights = get_fp32_state_dict_from_zero_checkpoint(str(run_dir / "checkpoints"), tag="last")
    assert any(name.startswith("backbone.") for name in weights) and any(name.startswith("head.") for name in weights)
    assert all(torch.isfinite(value).all() for value in weights.values())


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(tmp_path, small_shards):
    run_dir = tmp_path / "diverged"
    result = torchrun(2, *train_args(small_shards, run_dir, "train.engine=ddp", "train.checkpoint_every=1",
                                     "optim.optimizer=sgd", "optim.lr=1e12", "optim.schedule=constant"), port=29651)
    assert result.returncode != 0
    assert "non-finite" in result.stderr and "last good checkpoint" in result.stderr
    checkpoint = torch.load(run_dir / "checkpoints/last/checkpoint.pt", weights_only=True)
    assert all(torch.isfinite(value).all() for value in checkpoint["model"].values() if value.is_floating_point())
    assert not (run_dir / "checkpoints" / ".tmp-last").exists()


def test_raw_deepspeed_json_overrides_generated_keys(tmp_path):
    from dfdtrain.config import TrainConfig
    from dfdtrain.training.engines import deepspeed_config

    raw = tmp_path / "ds.json"
    raw.write_text(json.dumps({"zero_optimization": {"stage": 2, "overlap_comm": True}, "steps_per_print": 50}))
    config = deepspeed_config(TrainConfig(zero_stage=1, grad_accum=2, grad_clip=1.0), 4, 2, str(raw))
    assert config["zero_optimization"] == {"stage": 2, "overlap_comm": True} and config["steps_per_print"] == 50
    assert config["train_batch_size"] == 16 and config["gradient_clipping"] == 1.0


def test_single_process_bf16_train_with_wandb_offline_writes_the_run(tmp_path, small_shards):
    run_dir = tmp_path / "offline"
    result = subprocess.run([sys.executable, *train_args(small_shards, run_dir, "train.engine=ddp", "train.epochs=1",
                                                          "train.precision=bf16", "logger.wandb.mode=offline"),
                             "--json"],
                            capture_output=True, text=True, timeout=600, env=environment())
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["world_size"] == 1 and report["engine"] == "ddp" and report["val"]["video"]["auc"] is not None
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {row["kind"] for row in rows} == {"train", "eval"}
    assert list((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert (run_dir / "config.yaml").is_file() and Path(report["checkpoint"]).is_dir()
    bad = run_cli("train", f"run_dir={tmp_path / 'x'}", "data.train_shards=/nowhere/*.tar")
    assert bad.returncode == 2 and "no shard matches" in bad.stderr


def test_trainer_steps_track_non_finite_losses_on_the_device_and_check_them_once(tmp_path):
    """train_step never waits for the device: a NaN loss is folded into a flag that check_finite reads (the
    training loop calls it at log and checkpoint steps), which then stops with one line naming the steps."""
    from dfdtrain.config import config_from_dict
    from dfdtrain.training.trainer import NonFiniteLoss, Trainer
    from dfdtrain.testing.batches import FixedBatches

    config = config_from_dict({"run_dir": str(tmp_path / "run"), "train": {"engine": "ddp", "device": "cpu"},
                               "model": {"backbone": "mobilenetv2_050", "head": "mean",
                                         "head_options": {"hidden": [8]}},
                               "data": {"batch_size": 4}})
    batches = FixedBatches(steps=4, rank=0, per_rank=4)
    batches.frames[4:8] = float("nan")  # the second step's clips
    trainer = Trainer(config, train_loader=batches)
    trainer.begin_epoch(0)
    steps = iter(trainer.train_loader)
    assert trainer.train_step(next(steps)).stepped
    trainer.check_finite()  # step 1 was finite
    for batch in steps:
        trainer.train_step(batch)  # no exception here: nothing was read back
    with pytest.raises(NonFiniteLoss, match="non-finite loss between steps 2 and 4: training diverged; the last good "
                                            "checkpoint is none yet"):
        trainer.check_finite()

    state = trainer.state_dict()
    assert state["step"] == 4 and state["epoch"] == 0
    trainer.load_state_dict({**state, "step": 7})
    assert trainer.state.step == 7
    with pytest.raises(DfdError, match="unknown fields \\['rocket'\\]"):
        trainer.load_state_dict({**state, "rocket": 1})


class RunsCode:
    """What a booby-trapped checkpoint holds: unpickling it would run a shell command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_no_checkpoint_file_can_run_code(tmp_path, small_shards):
    """Every .pt file dfdtrain or DeepSpeed unpickles is loaded (or first vetted) with weights_only=True: a file
    holding anything but tensors and plain values is refused with one line, and its code never runs."""
    marker = tmp_path / "pwned"
    runs = {}
    for engine in ("ddp", "deepspeed"):
        run_dir = tmp_path / engine
        result = subprocess.run([sys.executable, *train_args(small_shards, run_dir, f"train.engine={engine}",
                                                             "train.zero_stage=1", "train.epochs=1")],
                                capture_output=True, text=True, timeout=600, env=environment())
        assert result.returncode == 0, result.stderr[-3000:]
        runs[engine] = run_dir
    # the untouched checkpoints load: DeepSpeed's ZeRO files pass the vetting (resume), ours load weights_only
    resumed = subprocess.run([sys.executable, *train_args(small_shards, runs["deepspeed"], "train.engine=deepspeed",
                                                          "train.zero_stage=1", "train.epochs=2"), "--resume", "must"],
                             capture_output=True, text=True, timeout=600, env=environment())
    assert resumed.returncode == 0 and "resuming" in resumed.stdout, resumed.stderr[-3000:]

    last = {engine: run_dir / "checkpoints" / "last" for engine, run_dir in runs.items()}
    traps = [  # (file to booby-trap, command that would unpickle it)
        (last["ddp"] / "rng-rank0.pt", train_args(small_shards, runs["ddp"], "train.engine=ddp", "train.epochs=2")
         + ["--resume", "must"]),
        (last["ddp"] / "checkpoint.pt", ["-m", "dfdtrain", "predict", "--checkpoint", last["ddp"], "--faces", "none",
                                         "--quiet", SMALL_CLIP]),
        (last["deepspeed"] / "mp_rank_00_model_states.pt", ["-m", "dfdtrain", "export", "--checkpoint",
                                                            last["deepspeed"], "--out", tmp_path / "bundle"]),
        (last["deepspeed"] / "zero_pp_rank_0_mp_rank_00_optim_states.pt",
         train_args(small_shards, runs["deepspeed"], "train.engine=deepspeed", "train.zero_stage=1",
                    "train.epochs=3") + ["--resume", "must"]),
    ]
    for path, command in traps:
        original = path.read_bytes()
        torch.save({"state": RunsCode(marker), "module": {}, "model": {}}, path)
        result = subprocess.run([sys.executable, *map(str, command)], capture_output=True, text=True, timeout=600,
                                env=environment())
        lines = [line for line in result.stderr.splitlines() if "error:" in line]
        assert result.returncode == 2 and len(lines) == 1, (path.name, result.stderr[-3000:])
        assert f"{path.name}: refused to load: it holds posix.system" in lines[0], lines[0]
        assert not marker.exists(), path.name
        path.write_bytes(original)
