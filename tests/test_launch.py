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


def test_launchers_find_the_python_that_has_dfdtrain_and_say_so_when_none_has(tmp_path):
    """Right after the README's set-up command (a .venv, not activated) a launcher must not run the system
    python3 (which failed with "No module named 'torch'" and blamed NCCL)."""
    bare_path = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}  # no venv, no dfdtrain command
    result = subprocess.run(["bash", str(REPO / "launch/single_node.sh"), "configs/demo.yaml"], capture_output=True,
                            text=True, timeout=120, cwd=REPO, env={**bare_path, "DRY_RUN": "1", "NPROC": "2"})
    assert result.returncode == 0, result.stderr
    python = shlex.split(result.stdout)[0]
    assert python != "python3" and subprocess.run([python, "-c", "import dfdtrain"]).returncode == 0, python

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    bare = str(tmp_path / "bare" / "bin" / "python")
    for script in ("launch/single_node.sh", "launch/deepspeed.sh"):
        refused = subprocess.run(["bash", str(REPO / script), "configs/demo.yaml"], capture_output=True, text=True,
                                 timeout=120, cwd=REPO, env={**bare_path, "PYTHON": bare})
        assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
            f"launch: no Python that can import torch and dfdtrain (tried: {bare}); run the README's set-up command "
            "(it makes .venv), activate a venv that has dfdtrain, or set PYTHON=/path/to/python"], refused.stderr

    # a run that fails on a CPU-only machine: the hint points at the error above, not at NCCL
    failed = run_script("launch/single_node.sh", tmp_path / "no-such-config.yaml", NPROC=1)
    assert failed.returncode != 0 and "no-such-config.yaml" in failed.stderr
    assert "its first error line is above" in failed.stderr and "NCCL" not in failed.stderr


def test_multi_node_launcher_rendezvous_of_two_nodes_on_this_machine_trains(tmp_path, trained_run):
    """launch/multi_node.sh for real: two invocations, as two nodes of one process each (NNODES=2, the c10d
    rendezvous on 127.0.0.1), meet and train one run of world size 2."""
    shards = trained_run.parent / "shards"
    environment = {**os.environ, "PYTHON": sys.executable, "NNODES": "2", "NPROC": "1", "MASTER_ADDR": "127.0.0.1",
                   "MASTER_PORT": "29781", "RUN_ID": "two-nodes"}
    command = ["bash", str(REPO / "launch/multi_node.sh"), "configs/demo.yaml", f"run_dir={tmp_path / 'run'}",
               "--quiet", f"data.train_shards={shards}/train-*.tar", f"data.val_shards={shards}/val-*.tar",
               "train.engine=ddp", "train.epochs=1", "data.epoch_samples=8", "data.batch_size=2", "clip.image_size=32",
               "data.num_workers=0"]
    nodes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                              env=environment) for _ in range(2)]
    outputs = [node.communicate(timeout=600) for node in nodes]
    for node, (_, stderr) in zip(nodes, outputs):
        assert node.returncode == 0, stderr[-3000:]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["world_size"] == 2 and report["steps"] == 2
