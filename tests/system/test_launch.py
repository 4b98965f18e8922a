"""launch/ and slurm/ scripts: valid bash, the commands they build, and a real 2-process run through one.

Here the Slurm templates' srun/torchrun command lines are checked with DRY_RUN; tests/system/test_slurm.py submits them
to a real one-node Slurm.
"""

import json
import os
import shlex
import subprocess
import sys

import pytest

from support import REPO, one_process_shards, shards_by_name, six_video_manifest

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


# Sharding: launch/shard.sh (torchrun on one node) and slurm/shard_array.sbatch (an array + a merge job; run for
# real in tests/system/test_slurm.py). Both must write exactly the shards of a one-process run.

def test_shard_launcher_runs_two_ranks_for_real_and_writes_the_one_process_shards(tmp_path, fixtures):
    manifest, _ = six_video_manifest(tmp_path, fixtures)
    reference = one_process_shards(manifest, tmp_path / "one")
    out = tmp_path / "shards"
    result = run_script("launch/shard.sh", manifest, out, "--shard-size", "600K", "--quiet", NPROC=2)
    assert result.returncode == 0, result.stderr[-3000:]
    shards, index = shards_by_name(out)
    assert shards == reference
    assert [part["part"] for part in index["parts"]] == [0, 1] and all(part["shards"] for part in index["parts"])
    assert not (out / ".parts").exists()


def test_shard_launcher_usage_and_command_lines():
    missing = run_script("launch/shard.sh")
    assert missing.returncode != 0 and missing.stdout == ""
    assert missing.stderr.startswith("usage: ") and "launch/shard.sh MANIFEST OUT" in missing.stderr
    assert run_script("launch/shard.sh", "m.jsonl").returncode != 0
    one = shlex.split(run_script("launch/shard.sh", "m.jsonl", "shards", "--workers", "4", DRY_RUN=1, NPROC=4).stdout)
    assert one == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m",
                   "dfdtrain", "shard", "--manifest", "m.jsonl", "--out", "shards", "--workers", "4"]
    multi = run_script("launch/shard.sh", "m.jsonl", "shards", DRY_RUN=1, NPROC=8, NNODES=3, MASTER_ADDR="node0")
    assert ("--nnodes=3 --rdzv_backend=c10d --rdzv_endpoint=node0:29500 --rdzv_id=shard --nproc_per_node=8 -m "
            "dfdtrain shard --manifest m.jsonl --out shards") in multi.stdout, multi.stderr


def test_shard_array_template_command_lines(tmp_path):
    """DRY_RUN: the two sbatch commands (the array, the merge after it), then what the array task and the merge
    job run. Submitted from tmp_path, without DFDTRAIN_SLURM_DIR: the script finds its own folder."""
    script = str(REPO / "slurm" / "shard_array.sbatch")
    (tmp_path / "m.jsonl").write_text("")
    environment = {key: value for key, value in os.environ.items() if key != "DFDTRAIN_SLURM_DIR"}

    def run(*args, **env):
        return subprocess.run(["bash", script, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                              env={**environment, "PYTHON": sys.executable, "DRY_RUN": "1", **env})

    submitted = run("2", "m.jsonl", "shards", "--shard-size", "600K", "--quiet",
                    PART_SBATCH_OPTIONS="--gres=gpu:1 --cpus-per-task=8")
    assert submitted.returncode == 0, submitted.stderr
    array, merge = [shlex.split(line) for line in submitted.stdout.splitlines()]
    assert array == ["sbatch", "--parsable", "--export=ALL", "--array=0-1", "--gres=gpu:1", "--cpus-per-task=8",
                     script, "2", "m.jsonl", "shards", "--shard-size", "600K", "--quiet"]
    assert merge == ["sbatch", "--parsable", "--export=ALL", "--dependency=afterok:ARRAY_JOB_ID",
                     "--kill-on-invalid-dep=yes", "--output=logs/%x-%j.out", script, "--merge", "shards", "--quiet"]
    assert not (tmp_path / "logs").exists()  # a dry run changes nothing

    # under Slurm (a batch job's environment): array task 1 of 2 runs part 1/2; the merge job merges
    in_batch = {"ENVIRONMENT": "BATCH", "SLURM_SUBMIT_DIR": str(tmp_path), "DFDTRAIN_SLURM_DIR": str(REPO / "slurm")}
    task = run(*array[7:], SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="2", **in_batch)
    assert task.returncode == 0, task.stderr
    assert shlex.split(task.stdout) == [sys.executable, "-m", "dfdtrain", "shard", "--manifest", "m.jsonl", "--out",
                                        "shards", "--part", "1/2", "--shard-size", "600K", "--quiet"]
    merged = run(*merge[7:], **in_batch)
    assert merged.returncode == 0, merged.stderr
    assert shlex.split(merged.stdout) == [sys.executable, "-m", "dfdtrain", "shard", "--merge", "--out", "shards",
                                          "--quiet"]

    refused = run("2", "m.jsonl", "shards", **in_batch)  # sbatch'ed directly, not as an array
    assert refused.returncode == 2 and "run this file with bash, not sbatch" in refused.stderr
    for wrong in ((), ("0", "m.jsonl", "shards"), ("two", "m.jsonl", "shards")):
        usage = run(*wrong)
        assert usage.returncode == 2 and usage.stderr.startswith("usage: bash slurm/shard_array.sbatch N MANIFEST OUT")
    no_manifest = run("2", "missing.jsonl", "shards")
    assert no_manifest.returncode == 2 and "no manifest at missing.jsonl" in no_manifest.stderr
