"""Running one stage of bench scale (benchmarks/scale.py): ``dfdtrain`` processes started together and waited for,
timed by the wall clock, with the peak memory of them and all their descendants (polled in a thread every 50 ms
from /proc; no psutil) and the bytes they wrote under their outputs.

The memory of a process tree is its summed PSS (``Pss`` of /proc/PID/smaps_rollup: each resident page divided
by the number of processes mapping it). Summed VmRSS counts a page once per process that maps it, so forked
DataLoader or shard workers, which share the parent's torch and data pages, would count them again each;
PSS counts them once over the tree, which is what the tree costs the machine. The VmRSS sum is kept beside it."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

POLL_SECONDS = 0.05


class StageFailed(Exception):
    """A stage's process exited non-zero: its exit status and the last line of its stderr."""

    def __init__(self, stage, rc, last_line):
        super().__init__(f"{stage}: exit {rc}: {last_line}")
        self.stage, self.rc, self.last_line = stage, rc, last_line


def parent_of(pid):
    """The parent pid of ``pid`` from /proc/PID/stat (None: the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text.rsplit(")", 1)[1].split()[1])  # after the command name (which may hold spaces): state, ppid


def tree_pids(roots):
    """``roots`` and every descendant of them alive now (one pass over /proc: ppid links)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            parent = parent_of(int(entry))
            if parent is not None:
                children.setdefault(parent, []).append(int(entry))
    found, waiting = [], list(roots)
    while waiting:
        pid = waiting.pop()
        found.append(pid)
        waiting += children.get(pid, [])
    return found


def memory_kb(pid, path, field):
    """``field`` (kB) of /proc/PID/``path``; 0 when the process is gone or a zombie (no such line)."""
    try:
        for line in Path(f"/proc/{pid}/{path}").read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakRss:
    """Polls the summed PSS (and VmRSS) of some processes and their descendants every POLL_SECONDS in a thread;
    ``peak_mb`` is the largest PSS sum seen, ``peak_sum_mb`` the largest VmRSS sum."""

    def __init__(self):
        self.roots, self.peak_kb, self.peak_sum_kb = [], 0, 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.poll, daemon=True)

    def watch(self, pid):
        self.roots.append(pid)
        if not self.thread.is_alive():
            self.thread.start()

    def poll(self):
        while not self.stopped.is_set():
            self.sample()
            self.stopped.wait(POLL_SECONDS)

    def sample(self):
        pids = tree_pids(self.roots)
        self.peak_kb = max(self.peak_kb, sum(memory_kb(pid, "smaps_rollup", "Pss:") for pid in pids))
        self.peak_sum_kb = max(self.peak_sum_kb, sum(memory_kb(pid, "status", "VmRSS:") for pid in pids))

    def stop(self):
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join()

    @property
    def peak_mb(self):
        return round(self.peak_kb / 1024, 1)

    @property
    def peak_sum_mb(self):
        return round(self.peak_sum_kb / 1024, 1)


def file_states(paths):
    """{file: (size, mtime_ns)} of the files under ``paths`` (files or folders; missing ones have none)."""
    states = {}
    for path in map(Path, paths):
        if path.is_dir():
            files = [item for item in path.rglob("*") if item.is_file()]
        else:
            files = [path] if path.is_file() else []
        for item in files:
            status = item.stat()
            states[item] = (status.st_size, status.st_mtime_ns)
    return states


def bytes_written(paths, before):
    """Bytes of the files under ``paths`` that are new or changed since ``before`` (``file_states`` then)."""
    return sum(size for item, (size, mtime) in file_states(paths).items() if before.get(item) != (size, mtime))


def dfdtrain_command(arguments):
    return [sys.executable, "-m", "dfdtrain", *map(str, arguments)]


def last_line(path):
    lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no stderr)"


def run_processes(stage, commands, logs, cwd):
    """Run ``commands`` (lists of arguments) together, each a dfdtrain process, and wait for all of them; returns
    (wall seconds, the monitor (``peak_mb``, ``peak_sum_mb``), start time). Raises StageFailed for the first that exits non-zero."""
    logs.mkdir(parents=True, exist_ok=True)
    monitor, running = PeakRss(), []
    started_at = time.time()
    started = time.perf_counter()
    for number, arguments in enumerate(commands):
        stdout = open(logs / f"{stage}.{number}.out", "w")
        stderr = open(logs / f"{stage}.{number}.err", "w")
        process = subprocess.Popen(dfdtrain_command(arguments), stdout=stdout, stderr=stderr, cwd=cwd)
        monitor.watch(process.pid)
        running.append((process, stdout, stderr))
    for process, stdout, stderr in running:
        process.wait()
        stdout.close()
        stderr.close()
    seconds = time.perf_counter() - started
    monitor.stop()
    for process, _, stderr in running:
        if process.returncode != 0:
            raise StageFailed(stage, process.returncode, last_line(stderr.name))
    return seconds, monitor, started_at
