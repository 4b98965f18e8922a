"""The GPU acceptance kit's steps: each one's budget, its GPU command and its CPU-sized variant, and how its
result is read: the headline figures that go into plan.json and the console, and what makes the step fail (a
GPU path that did not run on the GPU, a skip that would hide one, a missing case).
"""

import dataclasses
import shlex
import xml.etree.ElementTree as ElementTree

from kit_wheels import REPO

TOTAL_BUDGET_S = 9 * 60  # the whole GPU run, install included
INSTALL_BUDGET_S = 45
# The model step's cases (benchmarks/model.py names): two convolutional detectors in 4 variants each, and ViT-L/14
# with a fine-tuning method (bf16, NCHW: channels_last does not apply to a ViT); the dry run's CPU-sized stand-ins.
MODEL_CASES = ("EfficientNetB7@380", "ResNet152V2@224", "vit_large_patch14_clip_224@224+lora")
MODEL_CASES_CPU = ("mobilenetv2_050@64", "vit_tiny_patch16_224@224+lora")


# ---------------------------------------------------------------------------------------------------
# The steps


@dataclasses.dataclass
class Step:
    name: str
    budget_s: int  # its `timeout` on the GPU machine
    what: str
    output: str  # its result under OUT_DIR; {tag}: the GPU's name tag, or "quick" in the dry run
    gpu: list  # arguments after the Python executable on the GPU machine; {out}: the result's path
    cpu: list  # the CPU-sized variant the dry run runs


def gpu_test_files():
    """The test files holding GPU-marked tests (tests/integration/test_gpu.py; any other that marks tests so)."""
    marker = "pytest.mark." + "gpu"  # spelt in two pieces: this file is no test file
    return sorted(str(path.relative_to(REPO)) for path in (REPO / "tests").rglob("test_*.py")
                  if marker in path.read_text())


def steps():
    bench = ["-m", "dfdtrain", "bench"]
    tests = ["-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "--junitxml={out}", *gpu_test_files()]
    return [
        Step("decode", 70, "DALI mixed (NVDEC) vs PyAV, 16 sampled frames, on shards of the real fixtures: original "
             "videos and face clips, ratio in one run", "decode_shards_{tag}.json",
             ["benchmarks/gpu/shard_decode.py", "--device", "cuda", "--out", "{out}"],
             ["benchmarks/gpu/shard_decode.py", "--quick", "--device", "cpu", "--out", "{out}"]),
        Step("faces", 45, "the face store (dfdtrain shard --store faces) of 16 copies of the 10-s 1080p DFDC clip with "
             "MTCNN on the GPU (one shared detector) vs on the CPU: videos/s, seconds per stage (goal <= 1 s per "
             "video on the GPU)", "shard_faces_{tag}.json",
             ["benchmarks/gpu/shard_faces.py", "--device", "cuda", "--out", "{out}"],
             ["benchmarks/gpu/shard_faces.py", "--quick", "--device", "cpu", "--out", "{out}"]),
        Step("model", 120, "bench model: bf16 + channels_last vs fp32/NCHW for EfficientNet-B7@380 and "
             "ResNet152V2@224 (timm resnetv2_152), ViT-L/14@224 with LoRA (bf16), MFU against the device's peak",
             "model_{tag}.json",
             [*bench, "model", "--device", "cuda", "--cases", ",".join(MODEL_CASES), "--repeats", "3",
              "--steps", "5", "--warmup", "3", "--out", "{out}"],
             [*bench, "model", "--quick", "--device", "cpu", "--cases", ",".join(MODEL_CASES_CPU), "--out", "{out}"]),
        Step("train", 110, "bench train: the real loop with the DALI loader vs the same loop fed a batch already on "
             "the device (goal >= 0.95); its clips generated in parallel (train_step.py)", "train_{tag}.json",
             ["benchmarks/gpu/train_step.py", "--device", "cuda", "--repeats", "2", "--out", "{out}"],
             ["benchmarks/gpu/train_step.py", "--quick", "--device", "cpu", "--out", "{out}"]),
        Step("engine", 60, "bench engine: DeepSpeed ZeRO-1 (and 0, 2) vs DDP step time; world size 1 on one GPU",
             "engine_{tag}.json",
             [*bench, "engine", "--device", "cuda", "--nproc", "1", "--repeats", "3", "--steps", "5", "--warmup", "2",
              "--out", "{out}"],
             [*bench, "engine", "--quick", "--device", "cpu", "--nproc", "1", "--out", "{out}"]),
        Step("gpu_tests", 80, "pytest -m gpu: DALI mixed decode vs PyAV frames, predict/evaluate --device cuda, a "
             "bf16 training epoch (skipped, with the reason, without CUDA)", "gpu_tests_{tag}.xml", tests, tests),
    ]


def budget_s():
    return INSTALL_BUDGET_S + sum(step.budget_s for step in steps())


# ---------------------------------------------------------------------------------------------------
# Reading each step's result: the headline figures, and what makes the step fail


def summarise_decode(result, on_gpu, environment):
    stores, problems = result["stores"], []
    summary = {"videos": stores["original"]["videos"],
               "faces_speedup_over_original": result["ratios"]["faces_speedup_over_original"]}
    if "dali_gpu" in result["unavailable"]:
        summary["dali_gpu"] = result["unavailable"]["dali_gpu"]
        if on_gpu:
            problems.append(f"DALI mixed did not run: {result['unavailable']['dali_gpu']}")
    else:
        summary["dali_gpu_speedup_over_pyav"] = {store: stores[store]["dali_gpu_speedup_over_pyav"]
                                                 for store in ("original", "faces")}
        summary["dali_vs_pyav_mean_abs_max"] = {store: stores[store]["dali_vs_pyav_mean_abs_max"]
                                                for store in ("original", "faces")}
        summary["dali_vs_pyav_within_tolerance"] = all(stores[store]["dali_vs_pyav_within_tolerance"]
                                                       for store in ("original", "faces"))
    return summary, problems


def summarise_faces(result, on_gpu, environment):
    runs, problems = result["runs"], []
    summary = {"videos": result["settings"]["copies"], "workers": result["settings"]["workers"],
               **{key: {device: run[key] for device, run in runs.items()}
                  for key in ("wall_s", "videos_per_s", "wall_s_per_video", "stage_seconds", "skipped")},
               "cpu_over_gpu_wall": result["ratios"].get("cpu_over_gpu_wall"),
               "goal": result["goal"]["wall_s_per_dfdc_video_at_most"], "goal_met": result["goal"]["met"]}
    if "cuda" in result["unavailable"]:
        summary["cuda"] = result["unavailable"]["cuda"]
        if on_gpu:
            problems.append("the face store did not run with the detector on the GPU: "
                            f"{result['unavailable']['cuda']}")
    elif "shared_detector" in runs["cuda"]:
        summary["shared_detector"] = runs["cuda"]["shared_detector"]
    elif result["settings"]["workers"] > 1:  # the GPU path to prove: every worker's frames batched in one detector
        problems.append(f"{result['settings']['workers']} workers on the GPU, but no shared detector ran")
    return summary, problems


def summarise_model(result, on_gpu, environment):
    cases, problems = {}, []
    for case in result["cases"]:
        figures = {}
        if case.get("method"):  # a fine-tuning method case: bf16 / NCHW only
            figures.update({key: case[key] for key in ("method", "params_trainable", "params_total",
                                                       "gflops_per_clip_train")})
        headline_variants = None if case.get("method") else {("bf16", "channels_last"), ("fp32", "nchw")}
        for row in case["results"]:
            if headline_variants is None or (row["precision"], row["memory_format"]) in headline_variants:
                figures[f"{row['precision']}_{row['memory_format']}"] = {key: row[key] for key in (
                    "samples_per_s", "frames_per_s", "achieved_tflops", "mfu", "peak_tflops", "peak_mode", "peak_row")}
                if on_gpu and row["mfu"] is None:
                    problems.append(f"{case['case']}: no MFU ({row['mfu_reason']})")
        if "bf16_channels_last_over_fp32_nchw" in case["ratios"]:
            figures["bf16_channels_last_over_fp32_nchw"] = case["ratios"]["bf16_channels_last_over_fp32_nchw"]
        cases[case["case"]] = figures
    missing = set(MODEL_CASES if on_gpu else MODEL_CASES_CPU) - set(cases)
    if missing:
        problems.append(f"case(s) not measured: {', '.join(sorted(missing))}")
    # the GPU by name (MFU is against its row of benchmarks/common.py PEAK_TFLOPS: each row's peak_row)
    return {"device": result["machine"]["gpu"], "cases": cases}, problems


def summarise_train(result, on_gpu, environment):
    dali = bool(environment.get("dali_usable"))
    summary = {"real_over_synthetic": result["ratios"]["real_over_synthetic"],
               "goal": result["goal"]["real_over_synthetic_at_least"], "goal_met": result["goal"]["met"],
               "samples_per_s": {mode: values["samples_per_s"] for mode, values in result["modes"].items()},
               "real_loader": "DALI shard loader (decoder auto, DALI usable here)" if dali
               else "VideoLoader with PyAV workers (decoder auto, DALI not usable here)"}
    problems = [] if dali or not on_gpu else ["the real loop did not use DALI (dali_usable() is False here)"]
    return summary, problems


def summarise_engine(result, on_gpu, environment):
    engines = result["engines"]
    summary = {"world_size": result["world_size"], "backend": result["backend"],
               "ddp_step_s": engines["ddp"]["median_step_s"], "zero1_step_s": engines["zero1"]["median_step_s"],
               "zero1_over_ddp": result["ratios"]["zero1_over_ddp"],
               "goal_met": result["goal"]["met"]["zero1_over_ddp"], "ratios": result["ratios"]}
    if result["world_size"] == 1:
        summary["note"] = ("world size 1 on one GPU: DDP's gradient all-reduce and ZeRO-1's optimizer-state "
                           "partitioning have no peer, so this compares the engines' per-step overhead, not their "
                           "communication")
    return summary, []


def summarise_gpu_tests(path, on_gpu, environment):
    root = ElementTree.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    skipped, failed = {}, []
    for case in suite.iter("testcase"):
        name = f"{case.get('classname')}.{case.get('name')}"
        if case.find("skipped") is not None:
            skipped[name] = case.find("skipped").get("message", "")
        if case.find("failure") is not None or case.find("error") is not None:
            failed.append(name)
    summary = {**counts, "passed": counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"],
               "failed": failed, "skip_reasons": sorted(set(skipped.values()))}
    problems = []
    if counts["tests"] == 0:
        problems.append("no GPU-marked test was collected")
    if failed:
        problems.append(f"failed: {', '.join(failed)}")
    if on_gpu and skipped:  # on a GPU a skip hides the path it was to prove
        name, reason = next(iter(skipped.items()))
        problems.append(f"skipped on a GPU: {name} ({reason})")
    if not on_gpu and summary["passed"]:
        problems.append("a GPU-marked test ran without CUDA (it must skip)")
    return summary, problems


SUMMARISE = {"decode": summarise_decode, "faces": summarise_faces, "model": summarise_model,
             "train": summarise_train, "engine": summarise_engine, "gpu_tests": summarise_gpu_tests}


def command_text(arguments, out="OUT_DIR/RESULT"):
    return shlex.join(["python3", *[argument.format(out=out) for argument in arguments]])


def headline(name, record):
    """One short line of a step's figures for the console."""
    summary = record.get("summary") or {}
    if name == "decode":
        if "dali_gpu_speedup_over_pyav" in summary:
            ratios = summary["dali_gpu_speedup_over_pyav"]
            return (f"DALI/PyAV x{ratios['original']} originals, x{ratios['faces']} face clips; frames within "
                    f"tolerance: {summary['dali_vs_pyav_within_tolerance']}")
        return f"pyav only ({summary.get('dali_gpu', '?')})"
    if name == "faces":
        if summary.get("cpu_over_gpu_wall") is not None:
            return (f"{summary['wall_s_per_video']['cuda']} s/video on the GPU, {summary['wall_s_per_video']['cpu']} "
                    f"on the CPU (x{summary['cpu_over_gpu_wall']}); goal <= {summary['goal']} s met: "
                    f"{summary['goal_met']}")
        return f"{summary.get('wall_s_per_video', {}).get('cpu')} s/video on the CPU only ({summary.get('cuda', '?')})"
    if name == "model":
        return f"{summary.get('device') or 'no GPU'}: " + "; ".join(
            f"{case} bf16 MFU {figures['bf16_nchw']['mfu']}, {figures['bf16_nchw']['samples_per_s']} clips/s, "
            f"{figures['params_trainable']:,} params train" if "method" in figures else
            f"{case} bf16+CL MFU {figures['bf16_channels_last']['mfu']}, x"
            f"{figures['bf16_channels_last_over_fp32_nchw']} over fp32/NCHW"
            for case, figures in summary.get("cases", {}).items())
    if name == "train":
        return f"real/synthetic {summary.get('real_over_synthetic')} (goal met: {summary.get('goal_met')})"
    if name == "engine":
        return f"ZeRO-1/DDP {summary.get('zero1_over_ddp')} at world size {summary.get('world_size')}"
    if name == "gpu_tests":
        return (f"{summary.get('passed')} passed, {len(summary.get('failed', []))} failed, "
                f"{summary.get('skipped')} skipped")
    return ""
