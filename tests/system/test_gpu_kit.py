"""The GPU acceptance kit (benchmarks/gpu/): its CPU dry run for real, the refusal of a bad wheel list in one line,
the carry round trip (split into loads, received call by call, put back together, sha256-checked), and that
its summaries fail a GPU run whose GPU path did not run."""

import importlib.util
import json
import os
import random
import subprocess
import sys
import xml.etree.ElementTree as ElementTree

import pytest

from support import REPO

KIT_DIR = REPO / "benchmarks" / "gpu"
STEPS = ["decode", "faces", "model", "train", "engine", "gpu_tests"]
RESULTS = {"decode": "decode_shards_quick.json", "faces": "shard_faces_quick.json", "model": "model_quick.json",
           "train": "train_quick.json", "engine": "engine_quick.json", "gpu_tests": "gpu_tests_quick.xml"}


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


sys.path.insert(0, str(KIT_DIR))  # the kit's modules import one another by name, as run.sh runs kit.py
import kit_carry  # noqa: E402
import kit_steps  # noqa: E402
import kit_wheels  # noqa: E402


def run_script(script, *args):
    return subprocess.run(["bash", str(KIT_DIR / script), *map(str, args)], capture_output=True, text=True,
                          timeout=900, cwd=REPO, env={**os.environ, "PYTHON": sys.executable})


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory, fixtures):
    """`bash benchmarks/gpu/run.sh --dry-run OUT` for real, once: (completed process, OUT, plan.json)."""
    out = tmp_path_factory.mktemp("gpu_kit") / "out"
    completed = run_script("run.sh", "--dry-run", out)
    assert completed.returncode == 0, completed.stdout[-4000:] + completed.stderr[-2000:]
    return completed, out, json.loads((out / "plan.json").read_text())


def test_dry_run_prints_the_plan_with_each_budget(dry_run):
    completed, out, plan = dry_run
    text = completed.stdout
    count = len(kit_wheels.read_wheel_list())
    assert f"wheels  benchmarks/gpu/wheels.txt: {count} pinned wheels for cp312 manylinux x86_64" in text
    assert "nvidia-dali-cuda130==2.4.0" in text and "4 parts of at most 60 MiB (split -b 60M)" in text
    assert f"budget {plan['budget_s']} s of 540 s" in text
    assert "install      45 s" in text
    for step in kit_steps.steps():
        assert f"  {step.name:<10} {step.budget_s:>4} s  {step.what}" in text
    receive = "run(command='bash benchmarks/gpu/run.sh --receive', carry=['.gpu-carry/load1'], timeout_s=60)"
    assert f"call 1: {receive}" in text
    last = len(plan["carry"]["calls"])
    assert (f"call {last}: run(command='PYTHONUNBUFFERED=1 bash benchmarks/gpu/run.sh $OUT', carry=['.gpu-carry/"
            f"load{last}', '.gpu-carry/fixtures'], timeout_s=600)") in text
    assert "all steps ok" in text.splitlines()[-1]
    # what comes back from a device call: at most 8 files, named in letters, digits, '.', '_' and '-'
    assert sorted(path.name for path in out.iterdir()) == sorted(["plan.json", "kit.log", *RESULTS.values()])
    assert len(list(out.iterdir())) <= 8


def test_plan_json_holds_the_budgets_the_carry_and_every_step(dry_run):
    _, out, plan = dry_run
    assert plan["mode"] == "dry-run" and plan["ok"] is True and plan["tag"] == "quick"
    assert plan["budget_s"] == 45 + sum(step.budget_s for step in kit_steps.steps()) <= plan["total_budget_s"] == 540
    assert [record["name"] for record in plan["steps"]] == STEPS
    for record in plan["steps"]:
        assert record["status"] == "ok" and record["rc"] == 0 and record["problems"] == [], record
        assert record["result"] == RESULTS[record["name"]] and record["summary"]
        assert record["command"] == record["cpu_command"].replace("OUT_DIR/RESULT", str(out / record["result"]))
        if record["name"] != "gpu_tests":
            assert "--device cuda" in record["gpu_command"] and "--device cpu" in record["cpu_command"]
    assert plan["environment"]["cuda"] is False and plan["environment"]["gpu"] is None
    assert plan["install"]["status"] == "ok"

    wheels = {wheel["file"]: wheel for wheel in plan["wheels"]["wheels"]}
    calls = plan["carry"]["calls"]
    assert all(call["bytes"] <= 64 * 2**20 for call in calls)
    pieces = [piece for call in calls for piece in call["pieces"]]
    for file, wheel in wheels.items():  # every byte of every wheel travels exactly once
        own = sorted((offset, size) for name, size, offset in pieces if name == file or name.startswith(file + ".part"))
        assert sum(size for _, size in own) == wheel["bytes"] and len(own) == wheel["parts"]
        assert [offset for offset, _ in own] == [sum(size for _, size in own[:n]) for n in range(len(own))]
    assert wheels["nvidia_dali_cuda130-2.4.0-py3-none-manylinux_2_28_x86_64.whl"]["parts"] == 4
    assert [call["command"] for call in calls[:-1]] == ["bash benchmarks/gpu/run.sh --receive"] * (len(calls) - 1)
    assert calls[-1]["carry"][-1] == ".gpu-carry/fixtures"


def test_each_step_wrote_its_complete_result(dry_run):
    _, out, _ = dry_run
    decode = json.loads((out / RESULTS["decode"]).read_text())
    assert decode["benchmark"] == "decode" and decode["device"] == "cpu" and decode["settings"]["quick"] is True
    assert sorted(c["store"] for c in decode["comparisons"]) == ["faces", "original"]
    assert all(c["methods"]["pyav"]["frames_per_s"] > 0 and len(c["indices"]) == 16 for c in decode["comparisons"])
    assert decode["stores"]["faces"]["videos"] == decode["stores"]["original"]["videos"] == 1
    assert decode["unavailable"]["dali_gpu"].startswith("no GPU")

    faces = json.loads((out / RESULTS["faces"]).read_text())
    assert faces["benchmark"] == "shard_faces" and faces["device"] == "cpu" and faces["settings"]["quick"] is True
    (run,) = faces["runs"].values()
    assert run["device"] == "cpu" and run["videos"] == run["samples"] == 2 and run["videos_per_s"] > 0
    assert run["detector_frames"] > 0 and {"decode", "detect", "encode"} <= set(run["stage_seconds"])
    assert faces["goal"]["met"] is None and faces["unavailable"]["cuda"].startswith("no GPU")
    # a GPU run whose face detector stayed on the CPU fails the step; on a CPU that is expected
    assert kit_steps.summarise_faces(faces, False, {})[1] == []
    assert kit_steps.summarise_faces(faces, True, {})[1] == [
        "the face store did not run with the detector on the GPU: no GPU (run with --device cuda on a GPU machine)"]
    # the GPU-only reading, driven by this CPU run standing in for the cuda one (as PyAV stands in for DALI below):
    # several workers must have shared one detector, and the headline must hold the ratio and the goal
    shard_faces = load("gpu_shard_faces", KIT_DIR / "shard_faces.py")
    runs = {"cuda": {**run, "device": "cuda"}, "cpu": run}
    stand_in = {**faces, "runs": runs, "ratios": {"cpu_over_gpu_wall": 1.0}, "unavailable": {},
                "goal": shard_faces.goal_of(runs, False, {})}
    summary, problems = kit_steps.summarise_faces(stand_in, True, {})
    assert problems == ([f"{run['workers']} workers on the GPU, but no shared detector ran"] if run["workers"] > 1
                        else [])  # one worker keeps its own detector
    assert summary["goal_met"] is (run["wall_s_per_video"] <= 1.0) and set(summary["wall_s"]) == {"cuda", "cpu"}
    assert "on the GPU" in kit_steps.headline("faces", {"summary": summary})
    assert "GPU detector 1.0x faster" in " ".join(shard_faces.notes_for(runs, stand_in["ratios"], stand_in["goal"]))

    model = json.loads((out / RESULTS["model"]).read_text())
    assert model["benchmark"] == "model" and model["device"] == "cpu"
    case, vit = model["cases"]  # the GPU step's kinds of case: a detector in 4 variants, a ViT with a method
    assert {(row["precision"], row["memory_format"]) for row in case["results"]} == {
        ("fp32", "nchw"), ("fp32", "channels_last"), ("bf16", "nchw"), ("bf16", "channels_last")}
    assert vit["case"] == "vit_tiny_patch16_224@224+lora" and vit["params_trainable"] > 0
    assert [(row["precision"], row["memory_format"]) for row in vit["results"]] == [("bf16", "nchw")]
    assert all(row["mfu"] is None and "no GPU" in row["mfu_reason"] for row in case["results"] + vit["results"])
    # on a GPU the step must hold the ViT-L/14 case, with an MFU and the device named
    summary, problems = kit_steps.summarise_model(model, False, {})
    assert problems == [] and summary["cases"][vit["case"]]["method"] == "lora"
    assert "vit_large_patch14_clip_224@224+lora" in kit_steps.summarise_model(model, True, {})[1][-1]
    assert "vit_tiny_patch16_224@224+lora bf16 MFU None" in kit_steps.headline("model", {"summary": summary})

    train = json.loads((out / RESULTS["train"]).read_text())
    assert train["benchmark"] == "train" and set(train["modes"]) == {"real", "synthetic"}
    assert train["ratios"]["real_over_synthetic"] > 0 and train["settings"]["synth_processes"] >= 1
    assert "benchmarks/gpu/train_step.py" in train["notes"][-1]

    engine = json.loads((out / RESULTS["engine"]).read_text())
    assert engine["benchmark"] == "engine" and engine["world_size"] == 1
    assert {"ddp", "zero1"} <= set(engine["engines"]) and engine["ratios"]["zero1_over_ddp"] > 0

    suite = ElementTree.parse(out / RESULTS["gpu_tests"]).getroot().find("testsuite")
    tests, skipped = int(suite.get("tests")), int(suite.get("skipped"))
    assert tests >= 6 and skipped == tests and int(suite.get("failures")) == int(suite.get("errors")) == 0
    reasons = {case.find("skipped").get("message") for case in suite.iter("testcase")}
    assert len(reasons) == 1 and "needs a CUDA GPU" in reasons.pop()

    log = (out / "kit.log").read_text()
    assert all(f"===== {step} (exit 0, " in log for step in STEPS)


WHEEL_LINES = {
    "unpinned": ("av>=18.1.0  av-18.1.0-cp311-abi3-manylinux_2_28_x86_64.whl  35786210", "is not pinned"),
    "inconsistent": ("av==18.0.0  av-18.0.0-cp311-abi3-manylinux_2_28_x86_64.whl  35786210",
                     "av==18.0.0 differs from constraints.txt:"),
    "mac_wheel": ("av==18.1.0  av-18.1.0-cp311-abi3-macosx_11_0_arm64.whl  35786210",
                  "does not install on CPython 3.12 manylinux x86_64"),
    "python_3_11": ("libcst==1.9.0  libcst-1.9.0-cp311-cp311-manylinux_2_28_x86_64.whl  2255388",
                    "does not install on CPython 3.12 manylinux x86_64"),
    "other_file": ("av==18.1.0  av-18.0.0-cp311-abi3-manylinux_2_28_x86_64.whl  35786210",
                   "not the pinned av 18.1.0"),
}


@pytest.mark.parametrize("case", sorted(WHEEL_LINES))
@pytest.mark.parametrize("script", ["run.sh", "prepare.sh"])
def test_a_bad_wheel_list_is_refused_with_one_line(tmp_path, case, script):
    line, reason = WHEEL_LINES[case]
    name = line.split("==")[0].split(">=")[0]
    text = "".join(line + "\n" if row.startswith(name + "==") else row + "\n"
                   for row in (KIT_DIR / "wheels.txt").read_text().splitlines())
    listing = tmp_path / "wheels.txt"
    listing.write_text(text)
    number = next(n for n, row in enumerate(text.splitlines(), 1) if row.startswith(line.split()[0]))
    arguments = ["--wheels", listing] + (["--dry-run", tmp_path / "out"] if script == "run.sh" else [])
    completed = run_script(script, *arguments)
    assert completed.returncode == 2 and completed.stdout == ""
    assert len(completed.stderr.splitlines()) == 1, completed.stderr
    assert completed.stderr.startswith(f"gpu kit: {listing}:{number}: ") and reason in completed.stderr
    assert not (tmp_path / "out").exists()  # refused before anything ran (or, for prepare, was downloaded)


def test_the_carry_goes_round_trip_in_loads_and_parts(tmp_path):
    """Packing with tiny parts and calls, each load received as its own call would carry it, put back together
    (as `cat NAME.part* > NAME` would) and sha256-checked; a damaged part is caught in one line."""
    random.seed(7)
    sizes = {"big-1.0-py3-none-any.whl": 2500, "mid-1.0-py3-none-any.whl": 900, "small-1.0-py3-none-any.whl": 300}
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for file, size in sizes.items():
        (wheels / file).write_bytes(random.randbytes(size))
    originals = {file: (wheels / file).read_bytes() for file in sizes}
    calls = kit_carry.carry_plan(sizes, tree=100, fixtures=200, part_bytes=1000, limit=1500, margin=0)
    assert all(call["bytes"] <= 1500 for call in calls) and calls[-1]["carry"][-1] == ".gpu-carry/fixtures"
    assert sorted(name for call in calls for name, _, _ in call["pieces"]) == sorted(
        ["big-1.0-py3-none-any.whl.part00", "big-1.0-py3-none-any.whl.part01", "big-1.0-py3-none-any.whl.part02",
         "mid-1.0-py3-none-any.whl", "small-1.0-py3-none-any.whl"])
    carry = tmp_path / "carry"
    kit_carry.write_loads(calls, wheels, carry, {file: kit_carry.sha256(wheels / file) for file in sizes})

    parts = tmp_path / "root-parts"
    missing_counts = []
    for call in calls:  # each call carries only its own load
        sent = tmp_path / f"call{call['call']}"
        (sent / f"load{call['call']}").mkdir(parents=True)
        for path in (carry / f"load{call['call']}").iterdir():
            (sent / f"load{call['call']}" / path.name).write_bytes(path.read_bytes())
        manifest, missing, received = kit_carry.receive(sent, parts)
        assert received == [f"load{call['call']}"]
        missing_counts.append(len(missing))
    assert missing_counts[-1] == 0 and missing_counts == sorted(missing_counts, reverse=True)
    assert kit_carry.missing_text(manifest, ["big-1.0-py3-none-any.whl.part01"]) == \
        "1 piece(s) of the calls 3 (.gpu-carry/load3)"
    concatenated = subprocess.run("cat big-1.0-py3-none-any.whl.part*", shell=True, cwd=parts, capture_output=True)
    assert concatenated.stdout == originals["big-1.0-py3-none-any.whl"]
    paths = kit_carry.reassemble(manifest, parts)
    assert {path.name: path.read_bytes() for path in paths} == originals

    damaged = parts / "big-1.0-py3-none-any.whl.part01"
    damaged.write_bytes(b"x" + damaged.read_bytes()[1:])
    (parts / "wheels" / "big-1.0-py3-none-any.whl").unlink()
    with pytest.raises(kit_wheels.KitError, match=r"big-1.0-py3-none-any.whl: sha256 differs from the manifest"):
        kit_carry.reassemble(manifest, parts)


def test_the_gpu_run_reads_only_carried_fixtures_and_marked_tests():
    shard_decode = load("gpu_shard_decode", KIT_DIR / "shard_decode.py")
    shard_faces = load("gpu_shard_faces", KIT_DIR / "shard_faces.py")
    gpu_tests = load("gpu_tests_module", REPO / "tests" / "integration" / "test_gpu.py")
    carried = set(kit_carry.FIXTURES)
    assert set(shard_decode.VIDEOS) | set(shard_decode.QUICK_VIDEOS) | {shard_faces.CLIP} <= carried
    assert set(gpu_tests.REAL_CLIPS) | set(gpu_tests.PREDICT_CLIPS) <= carried
    # conftest's ffpp_shards: the FF++ 183/253 group (2 originals, 8 fakes) with the official splits
    group = {f"ffpp/original_sequences/youtube/c40/videos/{name}.mp4" for name in ("183", "253")}
    group |= {f"ffpp/manipulated_sequences/{method}/c40/videos/{pair}.mp4" for pair in ("183_253", "253_183")
              for method in ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures")}
    assert group | {f"labels/ffpp/{split}.json" for split in ("train", "val", "test")} <= carried
    assert kit_steps.gpu_test_files() == ["tests/integration/test_gpu.py"]
    assert any(mark.name == "gpu" for mark in gpu_tests.pytestmark)


def test_summaries_fail_a_gpu_run_whose_gpu_path_did_not_run(tmp_path):
    """A stand-in for DALI (PyAV itself) drives shard_decode's GPU-only code; a GPU run without DALI, or with a
    skipped GPU test, is a failed step, while the same on a CPU is expected."""
    from dfdtrain.data.decode.decoders import build_decoder
    from dfdtrain.demo.synth import synthesize

    shard_decode = load("gpu_shard_decode", KIT_DIR / "shard_decode.py")
    synthesize(tmp_path / "clips", count=2, frames=24, width=64, height=48, codec="h264", progress=False)
    data = (tmp_path / "clips/real/p0000/c0.mp4").read_bytes()
    reads = [{"label": f"{store}: clip", "store": store, "data": data, "name": "c0.mp4", "frames": 24, "width": 64,
              "height": 48, "codec": "h264", "indices": list(range(0, 24, 3))} for store in ("original", "faces")]
    pyav = build_decoder("pyav")
    methods = {"pyav": pyav, "dali_gpu": pyav}
    comparisons = shard_decode.measure(reads, methods, repeats=1)
    stores, ratios = shard_decode.store_totals(comparisons, methods)
    result = {"stores": stores, "ratios": ratios, "unavailable": {}}
    summary, problems = kit_steps.summarise_decode(result, True, {})
    assert problems == [] and summary["dali_vs_pyav_within_tolerance"] is True
    assert summary["dali_vs_pyav_mean_abs_max"] == {"original": 0.0, "faces": 0.0}
    assert set(summary["dali_gpu_speedup_over_pyav"]) == {"original", "faces"}
    assert any("DALI mixed (NVDEC)" in note for note in shard_decode.notes_for(stores, ratios, {}))

    without_dali = {**result, "unavailable": {"dali_gpu": "DfdError: nvidia.dali missing"}}
    assert kit_steps.summarise_decode(without_dali, True, {})[1] == [
        "DALI mixed did not run: DfdError: nvidia.dali missing"]
    assert kit_steps.summarise_decode(without_dali, False, {})[1] == []

    junit = tmp_path / "junit.xml"
    junit.write_text('<testsuites><testsuite name="pytest" tests="2" failures="0" errors="0" skipped="1">'
                     '<testcase classname="tests.test_gpu" name="test_a"/>'
                     '<testcase classname="tests.test_gpu" name="test_b"><skipped message="no DALI"/></testcase>'
                     '</testsuite></testsuites>')
    assert kit_steps.summarise_gpu_tests(junit, True, {})[1] == ["skipped on a GPU: tests.test_gpu.test_b (no DALI)"]
    assert kit_steps.summarise_gpu_tests(junit, False, {})[1] == ["a GPU-marked test ran without CUDA (it must skip)"]
    assert kit_steps.summarise_train({"ratios": {"real_over_synthetic": 1.0},
                                      "goal": {"real_over_synthetic_at_least": 0.95, "met": True}, "modes": {}},
                                     True, {"dali_usable": False})[1] == [
        "the real loop did not use DALI (dali_usable() is False here)"]
