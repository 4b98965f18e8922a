"""Render benchmarks/RESULTS.md from the JSON results (benchmarks/results/*.json), one section per file.

One renderer per benchmark name in RENDERERS (a new benchmark adds one entry); a result without one is still
listed, with its top-level numbers. Each section gives the device, the date, the table, the ratios (against
the goals where the issue sets one) and notes; the page starts with which GPU figures are still missing.

    python benchmarks/results_table.py [--results benchmarks/results] [--out benchmarks/RESULTS.md]
"""

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------------------------------
# Helpers


def table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell_text(cell) for cell in row) + " |" for row in rows]
    return lines


def cell_text(value):
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def megabytes(count):
    return f"{count / 1e6:,.1f} MB"


def device_line(result):
    machine = result.get("machine", {})
    where = f"GPU {machine['gpu']}" if machine.get("gpu") else "CPU only (no GPU)"
    cores = machine.get("cores_usable", machine.get("cores"))
    return (f"{where}; CPU {machine.get('cpu', '?')}, {cores} usable cores, load {machine.get('load_average_1m_at_start', '?')} "
            f"at start; torch {machine.get('torch', '?')}, timm {machine.get('timm', '?')}, "
            f"DeepSpeed {machine.get('deepspeed', '?')}, DALI {machine.get('nvidia_dali', '?')}, PyAV {machine.get('av', '?')}")


def ratio_lines(ratios, goals=None):
    """'name: value' per ratio; with goals {ratio name: minimum}, whether each meets it."""
    lines = []
    for name, value in ratios.items():
        goal = (goals or {}).get(name)
        verdict = "" if goal is None else f" (goal >= {goal}: {'met' if value >= goal else 'NOT met'})"
        lines.append(f"- `{name}` = {cell_text(value)}{verdict}")
    return lines


def verdict(ok):
    """A goal's outcome: met, NOT met, or not measured (None: nothing in the set to check it on)."""
    return "not measured" if ok is None else "met" if ok else "NOT met"


def notes(result):
    return [f"- {note}" for note in result.get("notes", [])]


# ---------------------------------------------------------------------------------------------------
# One renderer per benchmark: result dict -> markdown lines (the section body)


def render_decode(result):
    rows = []
    for item in result["comparisons"]:
        for method, stats in item["methods"].items():
            rows.append([item["video"], item["codec"], f"{item['width']}x{item['height']}", method,
                         stats["frames_per_s"], stats["videos_per_s"]])
    lines = table(["video", "codec", "size", "method", "frames/s", "videos/s"], rows)
    lines += ["", "Ratios (same run):"]
    for item in result["comparisons"]:
        lines += [f"- {item['video']}: " + ", ".join(f"`{k}` = {v}" for k, v in item["ratios"].items())]
    if result.get("unavailable"):
        lines += ["", "Not measured: " + "; ".join(f"{k}: {v}" for k, v in result["unavailable"].items())]
    return lines + [""] + notes(result)


def render_storage(result):
    def row(name, part):
        return [name, part["videos"], part["frames"], megabytes(part["original_bytes"]), megabytes(part["shard_bytes"]),
                megabytes(part["png_every_frame_bytes"]), megabytes(part["png_32_frames_256_bytes"]),
                part["ratio_png_every_frame_to_shards"], part["ratio_png_32_frames_256_to_shards"]]

    rows = [row("all", result)] + [row(name, part) for name, part in result.get("by_dataset", {}).items()]
    return table(["set", "videos", "frames", "original", "shards", "PNG every frame", "PNG 32 x 256²",
                  "PNG every frame / shards", "PNG 32 / shards"], rows) + [
        "", f"Shard overhead over the original files: {result['shard_overhead']:.2%}."]


def render_loader(result):
    rows = [[row["method"], row["workers"], row["samples_per_s"], row["frames_per_s"], row["first_batch_s"]]
            for row in result["results"]]
    settings = result["settings"]
    lines = [f"{result['data']['videos']} generated clips {settings['width']}x{settings['height']}, "
             f"{settings['num_frames']} frames sampled per clip, crops {settings['image_size']}², batch "
             f"{settings['batch_size']}, one process.", ""]
    lines += table(["method", "workers", "samples/s", "frames/s", "first batch (s)"], rows)
    lines += ["", "Ratios (same run):"] + ratio_lines(result["ratios"])
    synthesis = result.get("synthesis") or {}
    if "off" in synthesis:
        lines += ["", f"Synthesis (data.synthesis_fraction {synthesis['fraction']}, {synthesis['workers']} decoding "
                  "worker, face clips with landmarks; goal: on / off >= 0.7):", ""]
        lines += table(["synthesis", "samples/s", "on / off"],
                       [["off", synthesis["off"], 1.0], ["sbi", synthesis["sbi"], synthesis["ratio_sbi"]],
                        ["vb", synthesis["vb"], synthesis["ratio_vb"]]])
    elif synthesis:
        lines += ["", f"Synthesis: {synthesis.get('skipped')}"]
    degradation = result.get("degradation") or {}
    if "off" in degradation:
        clip = "x".join(str(side) for side in degradation["encode_clip"][:3])
        lines += ["", f"Degradation augmentation (data.augment.codec / perturb, in the {degradation['workers']} "
                  f"decoding worker; re-encoding one {clip} clip alone: {degradation['encode_ms']} ms, 1 thread):",
                  ""]
        lines += table(["data.augment", "samples/s", "on / off"],
                       [["off", degradation["off"], 1.0], ["codec 1.0", degradation["codec"],
                                                           degradation["ratio_codec"]],
                        ["codec 0.3", degradation["codec_0.3"], degradation["ratio_codec_0.3"]],
                        ["perturb 1.0", degradation["perturb"], degradation["ratio_perturb"]]])
    return lines + [""] + notes(result)


def render_model(result):
    rows = []
    for case in result["cases"]:
        for row in case["results"]:
            times = row["step_times_s"]
            rows.append([case["case"], f"{case['clips_per_step']}x{case['frames_per_clip']}", row["precision"],
                         row["memory_format"], row["samples_per_s"], row["frames_per_s"], row["achieved_tflops"],
                         row["mfu"], round(max(times) / min(times), 2)])
    lines = [f"Step: {result['settings']['step']}; batch = clips x frames per clip; spread = slowest / fastest timed "
             "block (large spreads mean the machine's load changed during the run: trust those ratios less).", ""]
    lines += table(["case", "batch", "precision", "memory format", "clips/s", "frames/s", "TFLOP/s", "MFU", "spread"],
                   rows)
    lines += ["", "Ratios (same run):"]
    for case in result["cases"]:
        if case["ratios"]:
            lines.append(f"- {case['case']}: " + ", ".join(f"`{k}` = {v}" for k, v in case["ratios"].items()))
    methods = [case for case in result["cases"] if case.get("method")]
    if methods:
        lines += ["", "Fine-tuning methods (finetune.method, bf16 only; MFU convention: "
                  f"{result['settings'].get('mfu_convention', '3 x forward FLOPs')}):"]
        lines += [f"- {case['case']}: {case['method_description']}; {case['params_trainable']:,} of "
                  f"{case['params_total']:,} parameters train; {case['gflops_per_clip_forward']} GFLOPs forward per "
                  f"clip; {case['memory_formats_note']}" for case in methods]
    reasons = {row["mfu_reason"] for case in result["cases"] for row in case["results"] if row["mfu_reason"]}
    if reasons:
        lines += ["", "MFU: " + "; ".join(sorted(reasons)) + "."]
    for case in result["cases"]:
        comparison = case.get("timm_comparison")
        if comparison:
            reference = comparison["timm"]
            figures = ", ".join(f"{k} {v} img/s" for k, v in reference["images_per_s"].items())
            lines.append(f"- timm's {case['case']} on {reference['device']} ({reference['precision']}): {figures}; "
                         f"ratio here: {cell_text(comparison['ratio'])} ({comparison['reason']}).")
    for skipped in result.get("skipped", []):
        lines.append(f"- Skipped {skipped['case']}: {skipped['reason']}.")
    return lines


def render_model_stats(result):
    rows = [[d["backbone"], d["timm_name"], d["head"], d["input_size"], d["frames"], d["params_backbone_m"],
             d["params_head_m"], d["gflops_per_frame"], d["gflops_per_clip_train"]] for d in result["detectors"]]
    return table(["backbone", "timm", "head", "size", "frames", "backbone M params", "head M params", "GFLOPs/frame",
                  "GFLOPs/clip (train)"], rows)


def render_train(result):
    rows = [[mode, values["samples_per_s"], values["steps_per_s"], values["frames_per_s"],
             values["epoch_samples_per_s"]] for mode, values in result["modes"].items()]
    settings = result["settings"]
    lines = [f"{settings['backbone']} + {settings['head']}, {settings['num_frames']} frames at {settings['image_size']}², "
             f"batch {settings['batch_size']}, {settings['num_workers']} loader worker(s), engine {settings['engine']}, "
             f"{settings['precision']}, {settings['steps_per_run']} steps per run, {settings['repeats']} run(s) per mode.",
             ""]
    lines += table(["mode", "samples/s", "steps/s", "frames/s", "whole-epoch samples/s"], rows)
    goal = result["goal"]["real_over_synthetic_at_least"]
    return lines + ["", "Ratios:"] + ratio_lines(result["ratios"], {"real_over_synthetic": goal}) + [""] + notes(result)


def render_engine(result):
    rows = [[name, values["engine"], values["zero_stage"], values["median_step_s"], values["samples_per_s"]]
            for name, values in result["engines"].items()]
    model = result["settings"]["model"]
    lines = [f"{result['world_size']} processes ({result['backend']}, {result['threads_per_process']} threads each), "
             f"{model['backbone']} + {model['head']} at {model['size']}², {model['clips']} clips x {model['frames']} "
             f"frames per process, {result['settings']['precision']}.", ""]
    lines += table(["variant", "engine", "ZeRO", "step (s)", "samples/s"], rows)
    goal = result["goal"]["deepspeed_over_ddp_at_least"]
    lines += ["", "Ratios (DDP step time / DeepSpeed step time):"] + ratio_lines(
        result["ratios"], {name: goal for name in result["ratios"]})
    sync = result.get("per_step_sync")  # results written before it was measured lack it
    if sync:
        lines += ["", f"A host sync per step (the DDP Trainer with `check_finite()` after every step): "
                      f"{cell_text(sync['ddp_sync_every_step_step_s'])} s per step vs {cell_text(sync['ddp_step_s'])} s "
                      f"as shipped; `shipped_over_sync_every_step` = {cell_text(sync['shipped_over_sync_every_step'])} "
                      "(> 1: the shipped loop is faster)."]
    return lines


def render_scaling(result):
    measured = result["measured"]
    rows = [[run["processes"], run["threads_per_process"], run["samples_per_s"], run["samples_per_s_per_process"],
             run["speedup_over_1"], run["ideal_speedup"], run["efficiency"]] for run in measured["runs"]]
    lines = [f"Measured (DDP, {measured['model']['backbone']}, weak scaling):", ""]
    lines += table(["processes", "threads each", "samples/s", "per process", "speed-up", "ideal", "efficiency"], rows)
    projection = result["projection"]
    lines += ["", "Projection (written, not measured):", ""] + [f"> {line}" for line in projection["text"]]
    for workload in projection["workloads"]:
        lines += ["", f"{workload['workload']} — {workload['clips_per_s_per_gpu']} clips/s per GPU, "
                      f"{workload['clips_per_gpu']} clips per GPU per step:", ""]
        lines += table(["nodes", "GPUs", "all-reduce (s)", "efficiency (overlap)", "efficiency (no overlap)",
                        "clips/s (overlap)", "DFDC epoch (min)"],
                       [[row["nodes"], row["gpus"], row["allreduce_s"], row["efficiency_overlap"],
                         row["efficiency_no_overlap"], row["clips_per_s_overlap"], row["dfdc_epoch_minutes_overlap"]]
                        for row in workload["nodes"]])
    return lines


def render_face_store(result):
    rows = []
    for name, part in [("all", result["overall"]), *result["by_dataset"].items()]:
        for setting, summary in part["settings"].items():
            rows.append([name, setting, part["videos"], megabytes(part["original_bytes"]),
                         megabytes(summary["clip_bytes"]), summary["bytes_vs_original"], summary["png_vs_clip"],
                         summary["decode_speedup_total"], summary["decode_speedup_min_per_video"],
                         summary["psnr_db_mean"], summary["mean_abs_error_mean"], summary["mean_abs_error_max"]])
    lines = table(["set", "setting", "videos", "original", "clips", "clips / original", "PNG / clips",
                   "decode speed-up (total)", "worst video", "PSNR dB", "mean error /255", "worst /255"], rows)
    sets = [("all videos", result["overall"]), *result["by_dataset"].items()]
    lines += ["", "Goals at the default setting: " + "; ".join(
        f"{name}: " + ", ".join(f"`{goal}` {verdict(ok)}"
                                for goal, ok in part["settings"]["default"]["goals_met"].items())
        for name, part in sets)]
    scope = result.get("goals_scope")  # issue 29's restatement (results written before it check every set)
    if scope:
        lines += ["", "Bytes and fidelity against the originals are goals on "
                      f"{scope['bytes_vs_original<=1, mean_abs_error_max<=2'].removeprefix('by_dataset ')} only; "
                      f"{scope['c40']}: see the Sharding section."]
    missing = result["settings"].get("decode_unavailable") or {}
    if missing:
        lines += ["", "Not measured: " + "; ".join(f"{method}: {why}" for method, why in missing.items())]
    return lines


def render_shard(result):
    lines = ["Sharding the fixture videos (one torch thread per process):", ""]
    lines += table(["store", "processes", "videos", "wall s", "videos/s", "CPU s / video", "decode", "detect",
                    "track", "encode", "verify", "frames detected / video"],
                   [[run["store"], run["processes"], run["videos"], run["wall_s"], run["videos_per_s"],
                     run["cpu_s_per_video"], *[run["stage_seconds"].get(stage) for stage in
                                               ("decode", "detect", "track", "encode", "verify")],
                     run["detector_frames_per_video"]] for run in result["runs"]])
    lines += ["", "Scaling efficiency, 2 processes over 1: " + ", ".join(
        f"{store} {value}" for store, value in result["scaling_efficiency_2_processes"].items())]
    lines += ["", "Face store, one process, per dataset (CPU seconds per video and per stage):", ""]
    lines += table(["dataset", "videos", "CPU s / video", "decode", "detect", "track", "encode", "verify"],
                   [[name, run["videos"], run["cpu_s_per_video"],
                     *[run["stage_seconds_per_video"].get(stage) for stage in
                       ("decode", "detect", "track", "encode", "verify")]]
                    for name, run in result["face_store_by_dataset"].items()])
    png = result["png_store"]
    lines += ["", f"Against a DeepfakeBench-style store ({result['settings']['png_store']}; "
                  f"{result['settings']['load']}):", ""]
    lines += table(["video", "source", "clip px", "clip frames", "original bytes", "PNG bytes", "clip bytes",
                    "clip / PNG bytes", "original ms", "PNG ms", "clip ms", "PNG ms / clip ms", "clip error /255"],
                   [[video["video"], f"{video['source_width']}x{video['source_height']}", video["clip_size"],
                     video["clip_frames"], megabytes(video["original_bytes"]) if "original_bytes" in video else None,
                     megabytes(video["png_bytes"]), megabytes(video["clip_bytes"]), video["clip_bytes_over_png"],
                     video.get("original_load_ms"), video["png_load_ms"], video["clip_load_ms"],
                     video["png_load_over_clip_load"], video["mean_abs_error"]] for video in result["png_store_videos"]])
    lines += ["", f"All videos: clips/s per core PNG {png['png_clips_per_s_per_core']}, face clips "
                  f"{png['clip_clips_per_s_per_core']} (PNG ms / clip ms {png['png_load_over_clip_load']}, worst video "
                  f"{png['png_load_over_clip_load_min_per_video']}); clip bytes / PNG bytes {png['clip_bytes_over_png']}"
                  f" (worst {png['clip_bytes_over_png_max_per_video']}); the PNGs keep 32 frames, the clips every one"]
    lines += render_storage_groups(result.get("storage_groups"))
    lines += render_parts(result.get("parts"))
    baseline = result.get("face_store_cpu_vs_baseline")
    if baseline:
        before = baseline.get("baseline_commit") or baseline["baseline"]
        lines += ["", f"Face store CPU seconds per video, this checkout vs commit `{before}` (one run, one torch "
                      "thread, steady state):", ""]
        lines += table(["video", "before (CPU s)", "now (CPU s)", "before / now"],
                       [[row["video"], row["baseline_cpu_s"], row["ours_cpu_s"], row["baseline_over_ours"]]
                        for row in baseline["videos"]])
        lines += ["", f"All three: before / now {baseline['baseline_over_ours_total']}"]
    lines += ["", "Goals: " + ", ".join(f"`{goal}` {verdict(ok)}" for goal, ok in result["goals_met"].items())]
    projection = result["projection"]
    lines += ["", f"Projection (written, not measured): {projection['dataset']}", ""]
    lines += table(["nodes", "GPUs", "cores", "hours, CPU detector", "hours, GPU detector",
                    "detector frames/s each GPU must sustain"],
                   [[row["nodes"], row["gpus"], row["cores"], row["hours_cpu_detector"], row["hours_gpu_detector"],
                     row["detector_frames_per_s_per_gpu_needed"]] for row in projection["nodes"]])
    lines += ["", "Assumptions:"] + [f"- {line}" for line in projection["assumptions"]]
    return lines


def render_storage_groups(groups):
    """Issue 29's storage goals per group: the group's totals and its worst video, figure by figure."""
    if not groups:  # results written before issue 29
        return []
    lines = ["", "The store against the originals and the PNG store, per group (issue 29: clips <= the originals' "
                 "bytes on raw/c23/DFDC; on c40 <= the PNG store's bytes at <= 2/255 and >= 10x faster sampled "
                 "decode than the original; original ms: the source video's 16 sampled frames, one core):"]
    figures = [  # (the group's figure, its worst video's, title)
        ("clip_bytes_over_original", "clip_bytes_over_original", "clip / original bytes"),
        ("clip_bytes_over_png", "clip_bytes_over_png", "clip / PNG bytes"),
        ("mean_abs_error_mean", "mean_abs_error", "mean error /255"),
        ("original_load_over_clip_load", "original_load_over_clip_load", "original ms / clip ms")]
    for group, summary in groups.items():
        if not summary["measured"]:
            lines += ["", f"**{group}**: not measured ({summary['why']})."]
            continue
        videos = f"{summary['videos']} video{'s' if summary['videos'] != 1 else ''}"
        lines += ["", f"**{group}** ({videos}: {megabytes(summary['original_bytes'])} original, "
                      f"{megabytes(summary['sample_clip_bytes'])} clips, {megabytes(summary['png_bytes'])} PNG):", ""]
        worst = summary["worst"]
        lines += table(["", *[title for _, _, title in figures]],
                       [["set", *[summary[key] for key, _, _ in figures]],
                        ["worst video", *[f"{cell_text(worst[key]['value'])} ({worst[key]['video']})"
                                          for _, key, _ in figures]]])
    return lines


def render_parts(parts):
    """One process vs 2 parts on this machine (issue 29)."""
    if not parts:  # results written before issue 29
        return []
    lines = ["", f"One process vs {len(parts['parts'])} parts started together on this machine, face store of "
                 f"{parts['videos']} videos in {parts['shards']} shards ({parts['command']}; every shard process "
                 f"detects on one torch thread):", ""]
    lines += table(["part", "predicted s", "measured s", "videos", "shards"],
                   [[part["part"], part["predicted_seconds"], part["seconds"], part["videos"], part["shards"]]
                    for part in parts["parts"]])
    differing = f" (differing: {', '.join(parts['differing_shards'])})" if parts["differing_shards"] else ""
    return lines + ["", f"Wall: one process {parts['one_process_wall_s']} s, {len(parts['parts'])} parts "
                        f"{parts['two_parts_wall_s']} s (+ merge {parts['merge_s']} s); speed-up {parts['speedup']}x "
                        f"(goal >= 1.5); imbalance max/min predicted {cell_text(parts['predicted_imbalance'])}, "
                        f"measured {cell_text(parts['measured_imbalance'])}; union byte-identical to the one-process "
                        f"shards: {cell_text(parts['union_byte_identical'])}{differing}"]


def render_scale(result):  # stage x N (issue 36); the ratios (largest N over smallest) on the largest N's row
    counts, rows = [str(count) for count in result["settings"]["videos"]], []
    for stage, count in [(stage, count) for stage in result["stages"] for count in counts if count in result["stages"][stage]]:
        entry, ratios = result["stages"][stage][count], [result["ratios"][stage], result["rss_ratios"][stage]]
        rows.append([stage, count, entry.get("seconds", f"FAILED (exit {entry.get('rc')}): {entry.get('error')}"),
                     entry.get("first_step_seconds"), entry.get("seconds_per_1k"), entry.get("peak_rss_mb"),
                     megabytes(entry.get("bytes", 0)), *(ratios if count == counts[-1] else ["", ""])])
    plot = f"![seconds and peak memory per stage against N](results/scale{'_quick' * result['settings']['quick']}.png)"
    return table(["stage", "N", "seconds", "first step s", "s / 1k videos", "peak PSS MB", "written", "s / 1k ratio",
                  "PSS ratio"], rows) + ["", *notes(result), "", plot]


def render_generic(result):
    scalars = {key: value for key, value in result.items() if isinstance(value, (int, float, str)) and key != "created"}
    return ["No renderer is registered for this benchmark (benchmarks/results_table.py RENDERERS); its top-level "
            "values:", ""] + [f"- `{key}`: {cell_text(value)}" for key, value in scalars.items()]


# benchmark name (the JSON's "benchmark") -> (section title, renderer); the page follows this order.
RENDERERS = {
    "decode": ("Decode: 16 sampled frames per video", render_decode),
    "storage": ("Storage: shards vs PNG face-crop stores", render_storage),
    "loader": ("Loader: shards to normalised batches on the device", render_loader),
    "model": ("Model: forward + backward throughput", render_model),
    "model_stats": ("Model FLOPs and parameters", render_model_stats),
    "train": ("Train end to end: real data vs a batch already on the device", render_train),
    "engine": ("Engine: DeepSpeed ZeRO 0/1/2 vs DDP", render_engine),
    "scaling": ("Scaling: processes here, projection to 8 GPUs x N nodes", render_scaling),
    "face_store": ("Face-clip store vs original videos: bytes, sampled decode, fidelity", render_face_store),
    "shard": ("Sharding: videos/s, stages, 1 vs 2 processes, DFDC projection, vs a PNG store", render_shard),
    "scale": ("Scale: every command at 1k to 100k videos (seconds per 1k, peak memory, bytes)", render_scale),
}


# ---------------------------------------------------------------------------------------------------


def load_results(folder):
    """[(path, result)] of every JSON result in ``folder``, in RENDERERS order, then by file name."""
    order = list(RENDERERS)
    loaded = [(path, json.loads(path.read_text())) for path in sorted(Path(folder).glob("*.json"))]
    return sorted(loaded, key=lambda item: (order.index(item[1].get("benchmark")) if item[1].get("benchmark") in order
                                            else len(order), item[0].name))


def gpu_status_line(results):
    """Which benchmarks have GPU figures, and an honest line about the ones that do not."""
    with_gpu = sorted({result.get("benchmark") for _, result in results if result.get("machine", {}).get("gpu")})
    measured = [name for name in RENDERERS if name not in ("model_stats", "storage", "scale")]  # CPU-only: no GPU run
    missing = [name for name in measured if name not in with_gpu]
    if not with_gpu:
        return ("**No GPU figures yet**: no GPU was lent to the sessions that produced these results, so everything "
                "below ran on a CPU (GPU decode with DALI/NVDEC, bf16 tensor-core throughput, MFU, NCCL scaling and "
                "the loader-vs-GPU ratio are missing). On a GPU machine run `dfdtrain bench all --device cuda` and "
                "commit the JSON it writes to benchmarks/results/.")
    if missing:
        return f"GPU figures exist for {', '.join(with_gpu)}; still missing on a GPU: {', '.join(missing)}."
    return f"GPU figures exist for every benchmark ({', '.join(with_gpu)})."


def render(results, folder_name="results"):
    lines = ["# Benchmark results", "",
             "Generated by `python benchmarks/results_table.py` (or `dfdtrain bench table`) from "
             f"`benchmarks/{folder_name}/*.json`; do not edit by hand. Every ratio compares medians measured in the "
             "same run; absolute CPU figures come from a shared 2-core machine and are noisy.", "",
             gpu_status_line(results)]
    for path, result in results:
        title, renderer = RENDERERS.get(result.get("benchmark"), (f"{result.get('benchmark', path.stem)}", render_generic))
        quick = " (quick mode)" if result.get("settings", {}).get("quick") else ""
        seconds = result.get("seconds")
        took = f" · {seconds} s" if isinstance(seconds, (int, float)) else ""
        lines += ["", f"## {title}{quick}", "",
                  f"`{folder_name}/{path.name}` · {result.get('created', 'date not recorded')}{took}", "",
                  f"Device: {device_line(result)}", ""]
        lines += renderer(result)
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=str(HERE / "results"), help="folder of JSON results")
    parser.add_argument("--out", default=str(HERE / "RESULTS.md"), help="markdown file to write ('-': stdout)")
    args = parser.parse_args(argv)
    results = load_results(args.results)
    if not results:
        print(f"results_table: no JSON results in {args.results}", file=sys.stderr)
        return 2
    text = render(results, Path(args.results).name)
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
        print(f"wrote {args.out} ({len(results)} results)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
