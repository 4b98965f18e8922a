"""Running the GPU acceptance kit's steps: each under `timeout` with its budget (on the GPU one after another, in
the dry run all at once), its output kept in kit.log, its result read into plan.json as it ends, and one line on
the console per step (its tail when it failed).
"""

import dataclasses
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from pathlib import Path

from kit_steps import SUMMARISE, TOTAL_BUDGET_S, Step, command_text, headline
from kit_wheels import REPO, write_json

DRY_RUN_STEP_BUDGET_S = 300  # a CPU variant's limit in the dry run: only against hangs, nothing is timed there
KILL_GRACE_S = 10  # `timeout -k`: a step that ignores SIGTERM is killed this much later
MIN_STEP_S = 15  # a step with less time left than this is not started


class Log:
    """The kit's own lines on stdout and in OUT_DIR/kit.log; each step's output is appended there too."""

    def __init__(self, path):
        self.path = Path(path)
        self.path.write_text("")

    def say(self, line=""):
        print(line, flush=True)
        with open(self.path, "a") as handle:
            handle.write(line + "\n")

    def append(self, title, path):
        with open(self.path, "a") as handle, open(path, errors="replace") as source:
            handle.write(f"\n===== {title} =====\n")
            shutil.copyfileobj(source, handle)


@dataclasses.dataclass
class Running:
    step: Step
    process: subprocess.Popen
    handle: object
    started: float
    out: Path
    log: Path
    budget: int
    command: list


def start(step, out_dir, tag, on_gpu, env, logs, budget):
    out = Path(out_dir) / step.output.format(tag=tag)
    out.unlink(missing_ok=True)  # a stale result must never pass for this run's
    arguments = [argument.format(out=out) for argument in (step.gpu if on_gpu else step.cpu)]
    log = Path(logs) / f"{step.name}.log"
    handle = open(log, "w")
    # timeout kills the whole process group at the budget (torchrun and DataLoader workers included)
    command = ["timeout", "-k", str(KILL_GRACE_S), str(budget), sys.executable, *arguments]
    process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                               env=env)
    return Running(step, process, handle, time.time(), out, log, budget, command)


def finish(running, on_gpu, environment):
    code = running.process.wait()
    running.handle.close()
    seconds = round(time.time() - running.started, 1)
    record = {"status": "ok", "rc": code, "seconds": seconds, "budget_s": running.budget,
              "result": running.out.name, "summary": None, "problems": []}
    if code == 124:
        record["status"] = "timed out"
        record["problems"].append(f"ran past its {running.budget} s budget")
    elif code == 137:
        record["status"] = "timed out"
        record["problems"].append(f"killed: still running {KILL_GRACE_S} s past its {running.budget} s budget, or "
                                  "out of memory")
    elif code != 0:
        record["status"] = "failed"
        record["problems"].append(f"exit {code}")
    if running.out.is_file():
        try:
            loaded = running.out if running.step.name == "gpu_tests" else json.loads(running.out.read_text())
            record["summary"], problems = SUMMARISE[running.step.name](loaded, on_gpu, environment)
            record["problems"] += problems
        except (ValueError, KeyError, TypeError, ElementTree.ParseError) as error:
            record["problems"].append(f"{running.out.name}: incomplete ({type(error).__name__}: {error})")
    elif record["status"] == "ok":
        record["problems"].append(f"{running.out.name} was not written")
    if record["problems"] and record["status"] == "ok":
        record["status"] = "failed"
    return record


def run_steps(log, plan, chosen, out_dir, tag, on_gpu, env, environment, deadline):
    """Every chosen step (on the GPU one at a time: nothing may share the device), each reported as it ends."""
    with tempfile.TemporaryDirectory() as logs:
        batches = [[step] for step in chosen] if on_gpu else [chosen]  # on the GPU nothing may share the device
        for batch in batches:
            running = []
            for step in batch:
                # on the GPU a step gets its budget, or what is left of the 9 minutes if that is less
                budget = min(step.budget_s, int(deadline - time.time()) - KILL_GRACE_S) if on_gpu \
                    else DRY_RUN_STEP_BUDGET_S
                if budget < MIN_STEP_S:
                    report_skipped(log, plan, step, f"not run: the {TOTAL_BUDGET_S} s budget is spent")
                    continue
                running.append(start(step, out_dir, tag, on_gpu, env, logs, budget))
            while running:  # report each step as it ends
                ended = [item for item in running if item.process.poll() is not None]
                if not ended:
                    time.sleep(0.2)
                for item in ended:
                    running.remove(item)
                    report_step(log, plan, item, finish(item, on_gpu, environment))
                    write_plan(out_dir, plan)


def report_step(log, plan, item, record):
    """A finished step: into the plan, its output into kit.log, one line (and on failure its tail) on the console."""
    step = item.step
    plan["steps"].append({"name": step.name, "what": step.what, "command": shlex.join(["python3", *item.command[5:]]),
                          "gpu_command": command_text(step.gpu), "cpu_command": command_text(step.cpu), **record})
    log.append(f"{step.name} (exit {record['rc']}, {record['seconds']} s)", item.log)
    line = f"  {step.name:<10} {record['status']:<9} {record['seconds']:>6} s  {record['result']}"
    log.say(line + (f"  {headline(step.name, record)}" if record["summary"] else ""))
    if record["problems"]:
        log.say(f"             problems: {'; '.join(record['problems'])}")
        with open(item.log, errors="replace") as handle:
            for tail in handle.read().splitlines()[-15:]:
                log.say(f"             | {tail}")


def report_skipped(log, plan, step, reason):
    plan["steps"].append({"name": step.name, "what": step.what, "command": None, "gpu_command": command_text(step.gpu),
                          "cpu_command": command_text(step.cpu), "status": "not run", "rc": None, "seconds": 0,
                          "budget_s": 0, "result": None, "summary": None, "problems": [reason]})
    log.say(f"  {step.name:<10} not run    {reason}")


def write_plan(out_dir, plan):
    write_json(Path(out_dir) / "plan.json", plan)
