"""launch/ and slurm/ scripts: valid bash, the commands they build, and a real 2-process run through one.

Here the Slurm templates' srun/torchrun command lines are checked with DRY_RUN; tests/test_slurm.py submits them
to a real one-node Slurm.
"""

import json
import os
import shlex
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPTS = sorted([*REPO.glob("launch/*.sh"), *REPO.glob("slurm/*.sh"), *REPO.glob("slurm/*.sbatch")])


def run_script(script, *args, **env):
    environment = {**os.environ, "PYTHON": sys.executable, **{key: str(value) for key, value in env.items()}}
    return subprocess.run(["bash", str(REPO / script), *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=environment, cwd=REPO)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.name)
def test_scripts_are_valid_bash(script):
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


def test_launch_commands():
    single = shlex.split(run_script("launch/single_node.sh", "configs/demo.yaml", "a.b=1", DRY_RUN=1, NPROC=4).stdout)
    assert single[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m", "dfdtrain",
                          "train", "--config", "configs/demo.yaml", "a.b=1"]
    multi = run_script("launch/multi_node.sh", "configs/demo.yaml", DRY_RUN=1, NNODES=3, MASTER_ADDR="node0", NPROC=8)
    assert "--nnodes=3 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=node0:29500 --rdzv_id=demo" in multi.stdout
    missing = run_script("launch/multi_node.sh", "configs/demo.yaml", DRY_RUN=1)
    assert missing.returncode != 0 and "NNODES" in missing.stderr
    deepspeed = run_script("launch/deepspeed.sh", "configs/demo.yaml", DRY_RUN=1, HOSTFILE="hosts")
    assert "deepspeed.launcher.runner --hostfile hosts" in deepspeed.stdout and "--module dfdtrain train" in deepspeed.stdout


def test_one_node_sbatch_template_command_line():
    result = run_script("slurm/train_1node.sbatch", "configs/demo.yaml", "train.epochs=2", DRY_RUN=1,
                        SLURM_SUBMIT_DIR=REPO, SLURM_JOB_NAME="b7", SLURM_JOB_ID=77, NPROC=4)
    command = shlex.split(result.stdout)
    assert command[:3] == ["srun", "--kill-on-bad-exit=1", sys.executable]
    for part in ("--standalone", "--nproc_per_node=4", "--resume", "auto", "run_dir=runs/b7",
                 "logger.wandb.name=b7-77", "train.epochs=2"):
        assert part in command


def test_single_node_launcher_runs_two_processes_for_real(tmp_path, trained_run):
    shards = trained_run.parent / "shards"
    result = run_script("launch/single_node.sh", "configs/demo.yaml", f"run_dir={tmp_path / 'run'}", "--quiet",
                        f"data.train_shards={shards}/train-*.tar", f"data.val_shards={shards}/val-*.tar",
                        "train.engine=ddp", "train.epochs=1", "data.epoch_samples=8", "data.batch_size=2",
                        "clip.image_size=32", "data.num_workers=0", NPROC=2)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["world_size"] == 2 and report["engine"] == "ddp"
