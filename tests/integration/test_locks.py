"""DirectoryLock: one writer per output directory; live owners refuse, dead or silent ones are taken over."""

import json
import os
import subprocess
import sys
import time

import pytest

from dfdtrain.core.locks import LOCK_FILE, DirectoryLock, DirectoryLocked

HOLD = """
import sys, time
from dfdtrain.core.locks import DirectoryLock
with DirectoryLock(sys.argv[1], "train"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_a_live_owner_in_another_process_refuses_with_one_line_and_a_dead_one_is_taken_over(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(DirectoryLocked, match=rf"in use by 'train' \(pid {holder.pid} on .*lock .*{LOCK_FILE}"):
            DirectoryLock(tmp_path, "shard").acquire()
    finally:
        holder.kill()  # SIGKILL: the lock file stays behind, naming a dead process
        holder.wait()
    assert (tmp_path / LOCK_FILE).is_file()
    with DirectoryLock(tmp_path, "shard") as lock:
        assert f"stale lock of 'train' (pid {holder.pid}" in lock.takeover_message()
        assert "is not running" in lock.takeover_message()
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert not (tmp_path / LOCK_FILE).exists()


def test_another_hosts_lock_holds_while_it_beats_and_is_taken_over_when_silent(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": "node-17", "pid": 4242, "command": "train"}))
    with pytest.raises(DirectoryLocked, match="pid 4242 on node-17"):
        DirectoryLock(tmp_path, "train", stale_seconds=60).acquire()
    old = time.time() - 120
    os.utime(tmp_path / LOCK_FILE, (old, old))
    lock = DirectoryLock(tmp_path, "train", stale_seconds=60).acquire()
    try:
        assert "no heartbeat for 2 min" in lock.takeover_message()
    finally:
        lock.release()


def test_the_heartbeat_keeps_a_held_lock_fresh_and_release_leaves_a_successor_alone(tmp_path):
    lock = DirectoryLock(tmp_path, "train", heartbeat_seconds=0.05).acquire()
    old = time.time() - 1000
    os.utime(tmp_path / LOCK_FILE, (old, old))
    time.sleep(0.3)
    assert time.time() - (tmp_path / LOCK_FILE).stat().st_mtime < 5
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 1, "command": "train"}))
    lock.release()  # no longer ours (taken over meanwhile): not removed
    assert (tmp_path / LOCK_FILE).is_file()


def test_a_dead_owner_whose_pid_this_process_now_has_is_stale(tmp_path):
    """In a restarted container the new job often gets the dead one's pid: its process start time tells them
    apart. The same process asking twice is refused."""
    import socket

    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                                  "process_start": 1, "command": "train"}))
    with DirectoryLock(tmp_path, "train") as lock:
        assert "its pid is reused" in lock.takeover_message()
        with pytest.raises(DirectoryLocked, match=f"pid {os.getpid()}"):
            DirectoryLock(tmp_path, "shard").acquire()


TRY = """
import sys, time
from dfdtrain.core.locks import DirectoryLock, DirectoryLocked
sys.stdin.readline()  # start together
try:
    with DirectoryLock(sys.argv[1], "train"):
        print("held", flush=True)
        time.sleep(2)
except DirectoryLocked:
    print("refused", flush=True)
"""


def test_of_several_processes_taking_over_one_stale_lock_exactly_one_wins(tmp_path):
    import socket

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout),
                                                  "command": "train"}))
    racers = [subprocess.Popen([sys.executable, "-c", TRY, str(tmp_path)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True) for _ in range(4)]
    time.sleep(1.0)  # all imported and waiting
    for racer in racers:
        racer.stdin.write("go\n")
        racer.stdin.flush()
    outcomes = sorted(racer.communicate(timeout=60)[0].strip() for racer in racers)
    assert outcomes == ["held", "refused", "refused", "refused"]


def test_a_zombie_owner_and_an_earlier_run_of_the_same_slurm_job_are_stale(tmp_path, monkeypatch):
    import socket

    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.time() + 30
    while not open(f"/proc/{zombie.pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z":  # exited, not reaped
        assert time.time() < deadline
        time.sleep(0.05)
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": zombie.pid, "command": "train"}))
    with DirectoryLock(tmp_path, "train") as lock:
        assert f"process {zombie.pid} is not running" in lock.takeover_message()
    zombie.wait()

    # Slurm requeued the job onto another node within the heartbeat window: the same job id takes over at once
    monkeypatch.setenv("SLURM_JOB_ID", "4711")
    requeued = {"host": "node-3", "pid": 99, "command": "train", "slurm_job": "4711"}
    (tmp_path / LOCK_FILE).write_text(json.dumps(requeued))
    with DirectoryLock(tmp_path, "train") as lock:
        assert "an earlier run of Slurm job 4711 (requeued)" in lock.takeover_message()
    (tmp_path / LOCK_FILE).write_text(json.dumps({**requeued, "slurm_job": "12"}))
    with pytest.raises(DirectoryLocked, match="pid 99 on node-3"):
        DirectoryLock(tmp_path, "train").acquire()
