"""The GPU acceptance kit: one prepared run that proves dfdtrain's GPU paths on a lent GPU machine in under 9
minutes of device time, its CPU dry run, and the preparation of the files it carries (README.md beside this).

    python benchmarks/gpu/kit.py OUT_DIR              on the GPU machine (run.sh): receive, install, every step
    python benchmarks/gpu/kit.py --receive            on the GPU machine, every call but the last: keep its load
    python benchmarks/gpu/kit.py --dry-run OUT_DIR    on a CPU: check the wheel list, plan, each step's CPU variant
    python benchmarks/gpu/kit.py --prepare            here: download the pinned wheels, split and pack them

Only the standard library: on a fresh GPU machine this runs before anything is installed.

The work is in the modules beside this one: kit_wheels.py (the wheel list, what every part shares), kit_carry.py
(what travels and how: the plan of calls, preparing and receiving the loads), kit_steps.py (each step and how its
result is read), kit_install.py (the install step and the environment probe), kit_running.py (running the steps).
"""

import argparse
import sys
import time
from pathlib import Path

from kit_carry import (CARRY, CARRY_LIMIT, CARRY_NAME, PART_BYTES, PARTS, calls_text, carry_plan,
                       check_tree, fixture_bytes, fixtures_root, missing_text, pieces_of, prepare, receive,
                       wheel_lines)
from kit_install import SITE, install_and_probe, step_environment
from kit_running import DRY_RUN_STEP_BUDGET_S, Log, run_steps, write_plan
from kit_steps import INSTALL_BUDGET_S, TOTAL_BUDGET_S, budget_s, command_text, steps
from kit_wheels import (CONSTRAINTS, MIB, WHEEL_LIST, KitError, display, now, read_constraints,
                        read_wheel_list)


def print_plan(log, mode, wheels, calls, tree, fixtures, chosen, on_gpu):
    total = sum(wheel.bytes for wheel in wheels)
    pinned = read_constraints(CONSTRAINTS)
    both = [wheel.pin for wheel in wheels if wheel.name in pinned]
    log.say(f"GPU acceptance kit: {mode}")
    log.say(f"wheels  {display(WHEEL_LIST)}: {len(wheels)} pinned wheels for cp312 manylinux x86_64, "
            f"{total / MIB:.1f} MiB; {len(both)} also in constraints.txt, same versions ({', '.join(both)})")
    for line in wheel_lines(wheels, {wheel.file: wheel.bytes for wheel in wheels}):
        log.say(line)
    log.say(f"carry   {len(calls)} device calls of at most {CARRY_LIMIT // MIB} MiB each (the tree that travels: "
            f"{tree / MIB:.1f} MiB; fixtures {fixtures / MIB:.1f} MiB with the last call):")
    for line in calls_text(calls):
        log.say(line)
    dry = f" (dry run: all at once, {DRY_RUN_STEP_BUDGET_S} s each; nothing is timed for the record)"
    log.say(f"steps   budget {budget_s()} s of {TOTAL_BUDGET_S} s; on the GPU one after another, each under `timeout`"
            f"{'' if on_gpu else dry}:")
    log.say(f"  {'install':<10} {INSTALL_BUDGET_S:>4} s  receive the last load, cat the parts, sha256, pip install "
            f"--no-index --no-deps --target {SITE}, import check")
    for step in chosen:
        log.say(f"  {step.name:<10} {step.budget_s:>4} s  {step.what}")
        log.say(f"  {'':<10} {'':>6}  $ {command_text(step.gpu, 'OUT_DIR/' + step.output.format(tag='TAG'))}")


def run(out_dir, dry_run, wheel_list=WHEEL_LIST, only=None):
    wheels = read_wheel_list(wheel_list)  # first, before anything is printed: a bad list is one line
    chosen = [step for step in steps() if not only or step.name in only]
    unknown = set(only or []) - {step.name for step in steps()}
    if unknown:
        raise KitError(f"--only: unknown step(s) {', '.join(sorted(unknown))} (known: "
                       f"{', '.join(step.name for step in steps())})")
    on_gpu = not dry_run
    if dry_run:
        tree = check_tree()
        fixtures = fixtures_root()
    else:  # on the GPU machine the tree is the copy the call sent, and the fixtures came in the last load
        tree = 0
        fixtures = CARRY / "fixtures" if (CARRY / "fixtures").is_dir() else fixtures_root()
    calls = carry_plan({wheel.file: wheel.bytes for wheel in wheels}, tree, fixture_bytes(fixtures))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = Log(out_dir / "kit.log")
    print_plan(log, "dry run on the CPU (checks, the plan, each step's CPU-sized variant; no GPU figures)" if dry_run
               else "GPU run", wheels, calls, tree, fixture_bytes(fixtures), chosen, on_gpu)
    plan = {"kit": "dfdtrain GPU acceptance kit", "mode": "dry-run" if dry_run else "gpu", "created": now(),
            "total_budget_s": TOTAL_BUDGET_S, "budget_s": budget_s(), "install_budget_s": INSTALL_BUDGET_S,
            "wheels": {"list": display(wheel_list), "bytes": sum(wheel.bytes for wheel in wheels),
                       "wheels": [{"pin": w.pin, "file": w.file, "bytes": w.bytes,
                                   "parts": len(pieces_of(w.file, w.bytes, PART_BYTES))} for w in wheels]},
            "carry": {"limit_bytes": CARRY_LIMIT, "part_bytes": PART_BYTES, "tree_bytes": tree, "calls": calls},
            "fixtures": str(fixtures), "steps": []}
    started = time.time()
    deadline = started + TOTAL_BUDGET_S
    try:
        environment = install_and_probe(log, plan, wheels, on_gpu, fixtures, started)
    except KitError as error:  # recorded in plan.json and kit.log too: they are what comes back from the device
        plan.update(ok=False, error=str(error), seconds=round(time.time() - started, 1))
        write_plan(out_dir, plan)
        with open(log.path, "a") as handle:
            handle.write(f"gpu kit: {error}\n")
        raise
    tag = environment["tag"] if on_gpu else "quick"
    plan["tag"] = tag
    env = step_environment(on_gpu, fixtures)
    write_plan(out_dir, plan)
    log.say(f"running {len(chosen)} steps" + (" one after another" if on_gpu else " at once (CPU variants)") + " ...")
    run_steps(log, plan, chosen, out_dir, tag, on_gpu, env, environment, deadline)
    order = [step.name for step in chosen]
    plan["steps"].sort(key=lambda record: order.index(record["name"]))
    plan["seconds"] = round(time.time() - started, 1)
    plan["ok"] = all(record["status"] == "ok" for record in plan["steps"])
    write_plan(out_dir, plan)
    failed = [record["name"] for record in plan["steps"] if record["status"] != "ok"]
    log.say(f"{'all steps ok' if plan['ok'] else 'FAILED: ' + ', '.join(failed)}"
            f" in {plan['seconds']} s; wrote {display(out_dir / 'plan.json')}")
    return 0 if plan["ok"] else 1


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="on a CPU: check, print the plan, run the CPU variants")
    mode.add_argument("--receive", action="store_true", help="on the GPU machine: keep this call's load in "
                      f"{PARTS} (every call but the last)")
    mode.add_argument("--prepare", action="store_true", help=f"here: download, split and pack into {CARRY_NAME}/")
    parser.add_argument("--wheels", default=str(WHEEL_LIST), help="the wheel list (default benchmarks/gpu/wheels.txt)")
    parser.add_argument("--only", default="", help="comma-separated steps to run (default: all)")
    parser.add_argument("out_dir", nargs="?", help="where plan.json, kit.log and each step's result go")
    args = parser.parse_args(argv)
    try:
        if args.prepare:
            prepare(Path(args.wheels))
            return 0
        if args.receive:
            manifest, missing, received = receive()
            print(f"received {', '.join(received) or 'no load in this call'}; {PARTS}: "
                  + (f"still missing {missing_text(manifest, missing)}" if missing
                     else f"every piece of the {len(manifest['wheels'])} wheels is here"), flush=True)
            return 0
        if not args.out_dir:
            parser.error("OUT_DIR is needed (or --receive / --prepare)")
        return run(args.out_dir, args.dry_run, Path(args.wheels), [name for name in args.only.split(",") if name])
    except KitError as error:
        print(f"gpu kit: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
