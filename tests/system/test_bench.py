"""`dfdtrain bench`: every benchmark's quick mode runs for real and writes complete JSON (no speed is asserted);
the peak FLOP/s lookup behind MFU; RESULTS.md rendering."""

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

from support import REPO, run_cli

BENCHMARK_NAMES = ("decode", "storage", "loader", "model", "train", "engine", "scaling", "face_store", "shard",
                   "scale")
MACHINE_KEYS = ("cpu", "cores", "cores_usable", "gpu", "python", "av", "numpy", "torch", "nvidia_dali", "timm",
                "deepspeed")


def load_benchmark_module(name):
    """A benchmarks/ script as a module, without putting benchmarks/ on sys.path (its train.py, model.py ...)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = load_benchmark_module("common")
results_table = load_benchmark_module("results_table")


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory, fixtures):
    """`dfdtrain bench all --quick` for real, once: {benchmark name: its JSON result}."""
    out_dir = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "DFDTRAIN_SCALE_CORPUS": str(out_dir / "scale_corpus")}  # not the user's ~/.cache
    completed = subprocess.run([sys.executable, "-m", "dfdtrain", "bench", "all", "--quick", "--out-dir", str(out_dir),
                                "--json"], capture_output=True, text=True, timeout=1200, cwd=REPO, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    summary = json.loads(completed.stdout)
    assert list(summary) == list(BENCHMARK_NAMES)
    results = {}
    for name, entry in summary.items():
        assert entry["status"] == 0 and entry["path"].endswith(f"{name}_quick.json"), entry
        results[name] = json.loads(open(entry["path"]).read())
    return results


def numbers(value):
    if isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from numbers(item)
    elif isinstance(value, list):
        for item in value:
            yield from numbers(item)


def assert_positive(mapping, *keys):
    for key in keys:
        value = mapping[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)


@pytest.mark.parametrize("name", BENCHMARK_NAMES)
def test_quick_result_has_the_machine_and_finite_numbers(quick_results, name):
    result = quick_results[name]
    assert result["benchmark"] == name
    assert list(result)[:5] == ["benchmark", "created", "machine", "device", "settings"]  # common.envelope's order
    assert list(result)[-1] == "seconds"
    for key in MACHINE_KEYS:
        assert key in result["machine"], key
    assert result["machine"]["cores"] > 0 and result["machine"]["cpu"]
    assert result["created"] and result["seconds"] > 0
    assert result["settings"]["quick"] is True
    assert all(math.isfinite(value) for value in numbers(result)), "NaN or infinity in the JSON"


def test_quick_loader_compares_shards_and_files_by_worker_count(quick_results):
    result = quick_results["loader"]
    runs = {(row["method"], row["workers"]): row for row in result["results"]}
    # the same shards from local disk, from S3 (SeaweedFS on loopback) and over HTTP, in one run
    assert set(runs) == {(method, workers) for method in ("shards", "files", "s3", "http") for workers in (0, 1)}
    for row in runs.values():
        assert_positive(row, "samples_per_s", "frames_per_s", "first_batch_s")
    assert set(result["ratios"]) == {"shards_over_files_0_workers", "shards_over_files_1_workers",
                                     "shards_1_workers_over_0", "files_1_workers_over_0",
                                     *(f"{method}_over_local_shards_{workers}_workers" for method in ("s3", "http")
                                       for workers in (0, 1))}
    assert_positive(result["ratios"], *result["ratios"])
    assert result["data"]["videos"] == 12 and result["data"]["shard_bytes"] > 0


def test_quick_model_measures_every_precision_and_memory_format(quick_results):
    result = quick_results["model"]
    (case,) = result["cases"]
    variants = {(row["precision"], row["memory_format"]) for row in case["results"]}
    assert variants == {("fp32", "nchw"), ("fp32", "channels_last"), ("bf16", "nchw"), ("bf16", "channels_last")}
    assert_positive(case, "gflops_per_frame", "gflops_per_clip_train")
    for row in case["results"]:
        assert_positive(row, "median_step_s", "samples_per_s", "frames_per_s", "achieved_tflops")
        assert row["frames_per_s"] == pytest.approx(row["samples_per_s"] * case["frames_per_clip"], rel=0.01)
        assert len(row["step_times_s"]) == result["settings"]["repeats"] == 2
        if result["machine"]["gpu"] is None:  # no GPU: no peak, so no MFU, and it says why
            assert row["mfu"] is None and row["mfu_reason"]
    assert_positive(case["ratios"], *case["ratios"])
    assert len(case["ratios"]) == 4


def test_model_method_case_reports_the_method_its_trainable_parameters_and_flops(tmp_path):
    """A fine-tuning method case on a small ViT, named with --cases (method cases never run unnamed on a CPU): bf16
    and NCHW only (channels_last does not apply to a ViT: the result says so), the method, its trainable
    parameters, FLOPs and the MFU convention; no MFU on a CPU."""
    out = tmp_path / "model.json"
    completed = run_cli("bench", "model", "--quick", "--device", "cpu", "--cases", "vit_tiny_patch16_224@224+lora",
                        "--out", out)
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(out.read_text())
    (case,) = result["cases"]
    assert case["case"] == "vit_tiny_patch16_224@224+lora" and case["method"] == "lora"
    assert case["method_description"].startswith("lora (rank 8")
    assert 0 < case["params_trainable"] < case["params_total"] / 10  # LoRA's A, B and the head
    assert case["gflops_per_clip_train"] == pytest.approx(3 * case["gflops_per_clip_forward"], rel=0.01)
    assert case["memory_formats"] == ["nchw"] and "does not apply to a ViT" in case["memory_formats_note"]
    (row,) = case["results"]
    assert (row["precision"], row["memory_format"]) == ("bf16", "nchw")
    assert_positive(row, "samples_per_s", "achieved_tflops")
    assert row["mfu"] is None and "no GPU" in row["mfu_reason"] and case["ratios"] == {}
    assert "3 x forward" in result["settings"]["mfu_convention"] and result["settings"]["device_name"] is None
    assert "Fine-tuning methods" in completed.stderr  # the summary for people lists the method case


CASES_RUN = """
import json, sys
sys.path.insert(0, "benchmarks")
import model

ran = []
model.measure_case = lambda case, *rest: ran.append(case.name) or (1.0, 1.0, {"total": 1, "trainable": 1}, [])
for argv in ([], ["--cases", "vit_large_patch14_clip_224@224+layernorm"]):
    model.main(["--device", "cpu", "--out", sys.argv[1], *argv])
    print("RAN", json.dumps([ran.copy(), json.load(open(sys.argv[1]))["skipped"]]))
    ran.clear()
"""


def test_model_has_a_vit_large_case_per_finetune_method_run_on_a_cpu_only_when_named(tmp_path):
    from dfdtrain.models.finetune_methods import FINETUNE_METHODS

    # measure_case stubbed: which cases a CPU run would measure, and which it skips (and why)
    completed = subprocess.run([sys.executable, "-c", CASES_RUN, str(tmp_path / "model.json")], capture_output=True,
                               text=True, timeout=300, cwd=REPO)
    assert completed.returncode == 0, completed.stderr[-3000:]
    (default_ran, default_skipped), (named_ran, named_skipped) = [
        json.loads(line[4:]) for line in completed.stdout.splitlines() if line.startswith("RAN ")]
    vit_large = [f"vit_large_patch14_clip_224@224+{method}" for method in FINETUNE_METHODS]  # one per method
    assert not set(vit_large) & set(default_ran) and "ResNet152V2@224" in default_ran
    reasons = {entry["case"]: entry["reason"] for entry in default_skipped}
    assert all("--cases" in reasons[name] for name in vit_large)
    assert named_ran == ["vit_large_patch14_clip_224@224+layernorm"] and named_skipped == []


def test_quick_train_compares_the_real_loop_with_an_on_device_batch(quick_results):
    result = quick_results["train"]
    for mode in ("real", "synthetic"):
        assert_positive(result["modes"][mode], "samples_per_s", "steps_per_s", "frames_per_s", "epoch_samples_per_s")
        (run,) = result["modes"][mode]["runs"]
        assert len(run["window_samples_per_s"]) == result["settings"]["windows"] == 3  # the loop's own log lines
    assert_positive(result["ratios"], "real_over_synthetic", "real_over_synthetic_whole_epoch",
                    "median_real_over_median_synthetic")
    assert result["goal"]["real_over_synthetic_at_least"] == 0.95
    assert result["goal"]["met"] is (result["ratios"]["real_over_synthetic"] >= 0.95)


def test_quick_engine_runs_ddp_and_deepspeed_zero_stages_in_two_processes(quick_results):
    result = quick_results["engine"]
    assert result["world_size"] == 2 and result["backend"] == "gloo"
    engines = result["engines"]
    assert [(engines[name]["engine"], engines[name]["zero_stage"]) for name in ("ddp", "zero0", "zero1", "zero2")] == [
        ("ddp", 0), ("deepspeed", 0), ("deepspeed", 1), ("deepspeed", 2)]
    assert engines["ddp"]["ddp_wrapped"] is True
    for values in engines.values():
        assert_positive(values, "median_step_s", "samples_per_s", "samples_per_s_per_process")
    assert set(result["ratios"]) == {"zero0_over_ddp", "zero1_over_ddp", "zero2_over_ddp"}
    assert_positive(result["ratios"], *result["ratios"])
    assert set(result["goal"]["met"]) == set(result["ratios"])
    # the DDP Trainer as shipped vs the same with check_finite() (a host sync) after every step, reported apart
    sync = result["per_step_sync"]
    assert_positive(sync, "ddp_step_s", "ddp_sync_every_step_step_s", "shipped_over_sync_every_step")
    assert sync["ddp_step_s"] == engines["ddp"]["median_step_s"]
    assert "ddp_sync_every_step" in result["settings"]["variants"]


def test_quick_scaling_measures_one_and_two_processes_and_projects_nodes(quick_results):
    result = quick_results["scaling"]
    runs = result["measured"]["runs"]
    assert [run["processes"] for run in runs] == [1, 2]
    for run in runs:
        assert_positive(run, "samples_per_s", "samples_per_s_per_process", "speedup_over_1", "efficiency")
    projection = result["projection"]
    assert projection["text"] and all(isinstance(line, str) and line for line in projection["text"])
    for key in ("gpus_per_node", "intra_node_allreduce_bus_gb_s", "inter_node_allreduce_bus_gb_s",
                "gradient_bytes_per_parameter", "h100_over_rtx3090_speed"):
        assert_positive(projection["assumptions"], key)
    assert len(projection["workloads"]) == 2
    for workload in projection["workloads"]:
        assert_positive(workload, "clips_per_s_per_gpu", "gflops_per_clip_train", "parameters", "gradient_mb")
        assert [row["nodes"] for row in workload["nodes"]] == projection["assumptions"]["nodes"]
        for row in workload["nodes"]:
            assert 0 < row["efficiency_no_overlap"] <= row["efficiency_overlap"] <= 1
            assert row["gpus"] == 8 * row["nodes"]


def test_quick_storage_compares_shards_with_png_stores(quick_results):
    result = quick_results["storage"]
    assert result["videos"] == 1
    assert_positive(result, "shard_bytes", "png_every_frame_bytes", "png_32_frames_256_bytes",
                    "ratio_png_every_frame_to_shards", "ratio_png_32_frames_256_to_shards")


def test_quick_face_store_compares_original_and_face_clip_shards(quick_results):
    result = quick_results["face_store"]
    assert len(result["videos"]) == 2 and set(result["by_dataset"]) == {"dfdc", "ffpp"}
    everywhere = {"decode_speedup_total>=10", "png_vs_clip>=20"}
    for setting in ("default", "all_intra"):
        summary = result["overall"]["settings"][setting]
        assert_positive(summary, "clip_bytes", "bytes_vs_original", "png_vs_clip", "decode_speedup_total",
                        "psnr_db_mean", "mean_abs_error_mean")
        # issue 29: bytes and fidelity against the originals are goals on DFDC; FF++ c40's are in bench shard
        assert set(summary["goals_met"]) == everywhere
        assert set(result["by_dataset"]["dfdc"]["settings"][setting]["goals_met"]) == {
            *everywhere, "bytes_vs_original<=1", "mean_abs_error_max<=2"}
        assert set(result["by_dataset"]["ffpp"]["settings"][setting]["goals_met"]) == everywhere
    assert "bench shard" in result["goals_scope"]["c40"]


def test_quick_shard_measures_stores_processes_stages_and_the_png_store(quick_results):
    result = quick_results["shard"]
    runs = {(run["store"], run["processes"]): run for run in result["runs"]}
    assert set(runs) == {(store, processes) for store in ("original", "faces") for processes in (1, 2)}
    for run in runs.values():
        assert_positive(run, "wall_s", "videos_per_s", "cpu_s_per_video")
    assert set(runs[("faces", 1)]["stage_seconds"]) == {"decode", "detect", "track", "encode", "verify"}
    assert runs[("faces", 1)]["detector_frames_per_video"] > 0 and runs[("original", 1)]["stage_seconds"] == {}
    assert set(result["face_store_by_dataset"]) == {"dfdc", "ffpp"}
    assert_positive(result["png_store"], "png_clips_per_s_per_core", "clip_clips_per_s_per_core", "png_bytes",
                    "clip_bytes", "png_load_over_clip_load")
    assert len(result["png_store_videos"]) == 2 and len(result["projection"]["nodes"]) == 4
    assert result["face_store_cpu_vs_baseline"] is None  # no --baseline


def test_quick_shard_restates_the_storage_goals_per_group(quick_results):
    result = quick_results["shard"]
    assert result["settings"]["original_repeats"] == 1
    for video in result["png_store_videos"]:  # the original's sampled load, timed with the clip's and the PNGs'
        assert_positive(video, "original_bytes", "original_load_ms", "original_load_over_clip_load",
                        "clip_bytes_over_original")
    assert {video["group"] for video in result["png_store_videos"]} == {"dfdc", "c40"}
    groups = result["storage_groups"]
    assert list(groups) == ["dfdc", "raw/c23", "c40"]
    assert groups["raw/c23"] == {"videos": 0, "measured": False, "why": "no raw/c23 video in this set"}
    for group in ("dfdc", "c40"):
        assert groups[group]["videos"] == 1 and groups[group]["measured"] is True
        assert_positive(groups[group], "clip_bytes_over_original", "clip_bytes_over_png", "mean_abs_error_mean",
                        "original_load_over_clip_load")
    assert "/c40/" in groups["c40"]["worst"]["mean_abs_error"]["fixture"]
    goals = result["goals_met"]
    assert list(goals) == ["dfdc: png_ms/clip_ms>=1 (every video)", "dfdc: clip_bytes/png_bytes<=1 (every video)",
                           "dfdc: clip bytes / original <= 1", "raw/c23: clip bytes / original <= 1",
                           "c40: clip bytes / PNG bytes <= 1 (set)", "c40: mean error <= 2/255 (mean over videos)",
                           "c40: sampled decode >= 10x the original (set)",
                           "parts: 2 parts / 1 process speed-up >= 1.5", "parts: union byte-identical"]
    assert goals["raw/c23: clip bytes / original <= 1"] is None  # no such video: not measured, not met
    assert all(isinstance(ok, bool) for goal, ok in goals.items() if not goal.startswith("raw/c23"))


def test_quick_shard_runs_two_parts_against_one_process(quick_results):
    parts = quick_results["shard"]["parts"]
    assert_positive(parts, "one_process_wall_s", "two_parts_wall_s", "merge_s", "speedup", "predicted_imbalance",
                    "measured_imbalance")
    assert parts["speedup"] == pytest.approx(parts["one_process_wall_s"] / parts["two_parts_wall_s"], rel=0.01)
    # quick: the 2 videos' first frames, one per shard, so each part writes one
    assert parts["videos"] == 2 and parts["shards"] == 2
    assert [(part["part"], part["videos"], part["shards"]) for part in parts["parts"]] == [(0, 1, 1), (1, 1, 1)]
    for part in parts["parts"]:
        assert_positive(part, "predicted_seconds", "seconds")
    assert parts["union_byte_identical"] is True and parts["differing_shards"] == []


def test_quick_scale_times_every_stage_at_both_sizes(quick_results):
    """Issue 36's quick mode: every stage at N = 200 and 2,000 as its own process, with finite figures, the growth
    ratios the CI gate checks, and the time to the first training step."""
    result = quick_results["scale"]
    assert result["settings"]["videos"] == [200, 2000] and result["errors"] == []
    assert list(result["stages"]) == ["index", "shard", "shard_parts", "shard_merge", "train", "evaluate", "calibrate",
                                      "protocol", "preview"]
    for stage, by_count in result["stages"].items():
        assert list(by_count) == ["200", "2000"], stage
        for count, entry in by_count.items():
            assert_positive(entry, "seconds", "seconds_per_1k", "peak_rss_mb", "bytes")
            assert entry["seconds_per_1k"] == pytest.approx(entry["seconds"] * 1000 / int(count), rel=0.05)
    for count in ("200", "2000"):
        first_step = result["stages"]["train"][count]["first_step_seconds"]
        assert 0 < first_step < result["stages"]["train"][count]["seconds"]
    assert set(result["ratios"]) == set(result["rss_ratios"]) == set(result["stages"])
    assert_positive(result["ratios"], *result["ratios"])
    assert_positive(result["rss_ratios"], *result["rss_ratios"])
    assert result["quick_check"]["passed"] is True and result["quick_check"]["failures"] == []
    assert all(value <= result["settings"]["quick_max_ratio"] for value in result["ratios"].values())


def test_results_table_renders_every_quick_result(quick_results, tmp_path):
    for name, result in quick_results.items():
        (tmp_path / f"{name}_quick.json").write_text(json.dumps(result))
    text = results_table.render(results_table.load_results(tmp_path))
    for name in BENCHMARK_NAMES:
        title = results_table.RENDERERS[name][0]
        assert f"## {title} (quick mode)" in text, name
    assert text.index("## Decode") < text.index("## Loader") < text.index("## Scaling")  # registry order
    assert "goal >= 0.95" in text and "goal >= 0.97" in text
    assert "shipped_over_sync_every_step" in text
    assert "Projection (written, not measured)" in text
    assert "**raw/c23**: not measured" in text and "`raw/c23: clip bytes / original <= 1` not measured" in text
    assert "union byte-identical to the one-process shards: yes" in text
    assert "Bytes and fidelity against the originals are goals on dfdc only" in text
    if all(result["machine"]["gpu"] is None for result in quick_results.values()):
        assert "No GPU figures yet" in text


# ---------------------------------------------------------------------------------------------------
# Without running benchmarks


def test_every_benchmark_has_a_renderer():
    from dfdtrain.commands.bench import BENCHMARKS

    assert set(BENCHMARKS) <= set(results_table.RENDERERS)
    assert all((REPO / "benchmarks" / script).is_file() for script in BENCHMARKS.values())


@pytest.mark.parametrize("device_name, row, bf16", [
    ("NVIDIA H100 80GB HBM3", "H100 SXM", 989.4),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756.0),
    ("NVIDIA H100 NVL", "H100 NVL", 835.5),
    ("NVIDIA H200", "H200 SXM", 989.4),
    ("NVIDIA A100-SXM4-80GB", "A100", 312.0),
    ("NVIDIA A100 80GB PCIe", "A100", 312.0),
    ("NVIDIA A10", "A10", 125.0),
    ("NVIDIA L4", "L4", 121.0),
    ("NVIDIA L40S", "L40S", 362.05),
    ("NVIDIA GeForce RTX 3090", "RTX 3090", 71.0),
])
def test_peak_lookup_picks_the_specific_row(device_name, row, bf16):
    peak, found, reason = common.peak_flops(device_name, "bf16")
    assert (found, peak, reason) == (row, bf16 * 1e12, None)


def test_unknown_or_missing_gpu_has_no_mfu_and_says_why():
    for name in ("NVIDIA A10G", "Tesla T4", None):
        values = common.mfu(1e12, name, "bf16")
        assert values["mfu"] is None and values["peak_tflops"] is None and values["mfu_reason"]
    assert "not in the peak" in common.mfu(1e12, "NVIDIA A10G", "bf16")["mfu_reason"]


def test_mfu_is_achieved_over_the_peak_of_the_math_mode():
    half_of_h100_bf16 = common.mfu(494.7e12, "NVIDIA H100 80GB HBM3", "bf16")
    assert half_of_h100_bf16["mfu"] == 0.5 and half_of_h100_bf16["peak_row"] == "H100 SXM"
    assert common.mfu(66.9e12, "NVIDIA H100 80GB HBM3", "fp32")["mfu"] == 1.0
    assert common.mfu(156e12, "NVIDIA A100-SXM4-40GB", "tf32")["mfu"] == 1.0
    import torch

    assert common.math_mode("bf16", torch.device("cpu")) == "bf16"
    assert common.math_mode("fp32", torch.device("cpu")) == "fp32"


def test_renderer_lists_an_unregistered_benchmark_and_names_missing_gpu_figures(tmp_path):
    engine_on_gpu = {"benchmark": "engine", "machine": {"gpu": "NVIDIA H100 80GB HBM3"}}
    newcomer = {"benchmark": "newcomer", "created": "2026-01-01T00:00:00+00:00", "machine": {"gpu": None},
                "videos": 3, "seconds": 1.5}
    (tmp_path / "newcomer_cpu.json").write_text(json.dumps(newcomer))
    text = results_table.render(results_table.load_results(tmp_path))
    assert "## newcomer" in text and "No renderer is registered" in text and "- `videos`: 3" in text
    line = results_table.gpu_status_line([(tmp_path / "engine.json", engine_on_gpu)])
    assert line.startswith("GPU figures exist for engine") and "decode" in line and "engine," not in line


def test_envelope_puts_the_shared_keys_around_the_measurements_in_one_order():
    import time

    import torch

    result = common.envelope("newcomer", torch.device("cpu"), {"quick": True}, time.time() - 2, videos=3,
                             ratios={"a_over_b": 1.5})
    assert list(result) == ["benchmark", "created", "machine", "device", "settings", "videos", "ratios", "seconds"]
    assert result["device"] == "cpu" and result["seconds"] >= 2 and result["machine"]["cores"] > 0
    assert "device" not in common.envelope("counting", None, {}, time.time())  # ran nothing on a device
    with pytest.raises(ValueError, match="seconds"):
        common.envelope("clash", "cpu", {}, time.time(), seconds=1)


def test_bench_without_a_benchmarks_folder_is_a_one_line_error(tmp_path):
    completed = run_cli("bench", "--benchmarks-dir", tmp_path, "model", "--quick")
    assert completed.returncode == 2
    assert completed.stderr.strip().count("\n") == 0 and "benchmarks/ folder not found" in completed.stderr
