"""An exclusive lock on an output directory (a run directory, a shard folder): one writer at a time.

    with DirectoryLock(run_dir, "train"):
        ...  # only this process writes run_dir

The lock is a file, ``DIR/.dfdtrain.lock``, created whole and exclusively (a hard link) and holding its owner
(host, pid, process start, command, time); a thread touches it every ``HEARTBEAT_SECONDS`` while it is held.
Another process that finds it is refused with one line naming the owner, unless the lock is stale: its owner
is a dead process on this host (pid and start time, since a restarted container may reuse the pid), or
(another host, which cannot be asked) its heartbeat is older than ``STALE_SECONDS``. A stale lock is taken
over with a message. A file and not ``flock``, because flock does not hold across hosts on most shared file
systems, where run directories live.
"""

import json
import os
import socket
import tempfile
import threading
import time

from dfdtrain.core.errors import DfdError

LOCK_FILE = ".dfdtrain.lock"
HEARTBEAT_SECONDS = 30
STALE_SECONDS = 5 * 60


def _slurm_task():
    """This process's task within its Slurm job (step.task), or None outside an srun step."""
    step = os.environ.get("SLURM_STEP_ID")
    return f"{step}.{os.environ.get('SLURM_PROCID', '0')}" if step is not None else None


class DirectoryLocked(DfdError):
    """Another live process holds the directory's lock."""


def _process_stat(pid):
    """(state letter, start time in clock ticks since boot) of process ``pid`` from /proc, or (None, None)."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None, None


def _process_alive(pid, started=None):
    """Whether process ``pid`` runs and, when ``started`` is known, is the same process (a restarted container
    often gives a new job the pid of the dead one). A zombie is dead: where nothing reaps orphans (many
    containers), a killed owner stays one."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        pass
    state, start = _process_stat(pid)
    return state != "Z" and (started is None or start in (None, started))


class DirectoryLock:
    """Hold ``folder``'s lock for ``command`` (a word for messages: train, shard). ``acquire`` raises
    DirectoryLocked when a live process holds it; ``release`` removes the file (only if still ours)."""

    def __init__(self, folder, command, heartbeat_seconds=HEARTBEAT_SECONDS, stale_seconds=STALE_SECONDS,
                 name=LOCK_FILE):
        self.folder, self.command = os.fspath(folder), command
        self.path = os.path.join(self.folder, name)  # another name: a lock on one share of the folder's work
        self.heartbeat_seconds, self.stale_seconds = heartbeat_seconds, stale_seconds
        self.owner = {"host": socket.gethostname(), "pid": os.getpid(), "process_start": _process_stat(os.getpid())[1],
                      "slurm_job": os.environ.get("SLURM_JOB_ID"), "slurm_task": _slurm_task(), "command": command,
                      "started": time.time()}
        self.taken_over = None  # the stale owner this lock replaced, if any (for the message)
        self._stop = threading.Event()
        self._thread = None

    def _read_owner(self):
        try:
            with open(self.path) as handle:
                owner = json.load(handle)
            return owner if isinstance(owner, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # foreign or damaged: judged by its age alone

    def _stale_reason(self, owner):
        """Why the lock at ``self.path`` (held by ``owner``) is stale, or None while its owner may be alive."""
        try:
            age = time.time() - os.stat(self.path).st_mtime
        except FileNotFoundError:
            return "gone"
        if (self.owner["slurm_job"] and owner.get("slurm_job") == self.owner["slurm_job"]
                and owner.get("slurm_task") == self.owner["slurm_task"] and owner != self.owner):
            # Slurm runs one instance of a job's task at a time: this is the job requeued, maybe onto another node
            # (the tasks of one srun step run side by side: each is its own task)
            return f"an earlier run of Slurm job {owner['slurm_job']} (requeued)"
        if owner.get("host") == self.owner["host"] and isinstance(owner.get("pid"), int):
            if owner["pid"] == os.getpid():  # this very process holds it, or a dead one whose pid we now have
                start = self.owner["process_start"]
                ours = start is not None and owner.get("process_start") == start
                return None if ours else f"process {owner['pid']} is not running (its pid is reused)"
            alive = _process_alive(owner["pid"], owner.get("process_start"))
            return None if alive else f"process {owner['pid']} is not running"
        if age > self.stale_seconds:
            return f"no heartbeat for {age / 60:.0f} min"
        return None

    def live_owner(self):
        """The owner of this lock while another live process holds it, else None: a look, not an acquire."""
        owner = self._read_owner()
        if owner is None or owner == self.owner:
            return None
        return owner if self._stale_reason(owner) is None else None

    def _create(self):
        """Create the lock file whole, or return False if it exists: written beside it, then hard-linked into
        place (atomic, and exclusive on NFS too), so no reader ever sees a half-written owner."""
        fd, temporary = tempfile.mkstemp(dir=self.folder, prefix=LOCK_FILE + ".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(self.owner, handle)
            try:
                os.link(temporary, self.path)
            except FileExistsError:
                return False
            except OSError:  # a file system without hard links: an exclusive create, then the owner
                try:
                    fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "w") as handle:
                    json.dump(self.owner, handle)
            return True
        finally:
            os.unlink(temporary)

    def _take_over(self, owner, reason):
        """Remove the stale lock of ``owner``, one taker at a time: a second taker that saw the same stale lock
        finds the first one's fresh lock instead and leaves it alone."""
        guard = self.path + ".takeover"
        try:
            os.close(os.open(guard, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        except FileExistsError:
            try:
                if time.time() - os.stat(guard).st_mtime > 60:  # a taker that died between these lines
                    os.unlink(guard)
            except FileNotFoundError:
                pass
            time.sleep(0.1)
            return
        try:
            if self._read_owner() == owner:
                os.unlink(self.path)
                self.taken_over = {**owner, "reason": reason}
        finally:
            os.unlink(guard)

    def acquire(self):
        os.makedirs(self.folder, exist_ok=True)
        for _ in range(50):  # each turn: create it, or find a live owner, or take a stale one over and retry
            if self._create():
                self._thread = threading.Thread(target=self._heartbeat, name="dfdtrain-lock-heartbeat", daemon=True)
                self._thread.start()
                return self
            owner = self._read_owner()
            if owner is None:
                continue
            reason = self._stale_reason(owner)
            if reason is None:
                raise DirectoryLocked(
                    f"{self.folder}: in use by '{owner.get('command', '?')}' (pid {owner.get('pid', '?')} on "
                    f"{owner.get('host', '?')}, lock {self.path}); wait for it to end, or stop it")
            self._take_over(owner, reason)
        raise DirectoryLocked(f"{self.folder}: could not take the lock {self.path} (others keep taking it)")

    def _heartbeat(self):
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                os.utime(self.path)
            except OSError:
                return

    def release(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        owner = self._read_owner()
        if owner and owner.get("pid") == self.owner["pid"] and owner.get("host") == self.owner["host"]:
            os.unlink(self.path)

    def takeover_message(self):
        """One line for a stale lock this one replaced, else None."""
        if not self.taken_over:
            return None
        owner = self.taken_over
        return (f"{self.folder}: took over a stale lock of '{owner.get('command', '?')}' (pid {owner.get('pid', '?')} "
                f"on {owner.get('host', '?')}: {owner['reason']})")

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
