"""Every command at dataset scale (issue 36): wall seconds, seconds per 1,000 videos, peak RSS and bytes written of
each stage of the pipeline at N = 1,000, 10,000 and 100,000 tiny videos, each stage a separate process as a user
types it.

  corpus      N generated videos (8 frames, 64x64, H.264) as a folder dataset: ``real/gNNNNNN/c0.mp4``,
              ``real/gNNNNNN/c1.mp4``, ``fake/gNNNNNN/c0.mp4``, ``fake/gNNNNNN/c1.mp4``, so each group (the first
              sub-folder) holds 4 videos, 2 real and 2 fake. Rendering and encoding every video with
              ``dfdtrain.demo.synth`` runs at ~100 videos/s here (100,000 would take ~17 minutes), so the videos
              are copies of a pool of 128 synth clips (64 persons, one real and one fake each: ``synthesize``,
              with its ``synth.json`` of ground-truth face boxes per frame, kept in the corpus as ``pool/``);
              ``corpus.json`` names each video's pool clip, so its face boxes are the pool clip's. Each copy is its
              own file (its own inode and pages, as on a real disk). A corpus is cached per N under ``--corpus``
              and reused by later runs, with ``face_boxes.jsonl`` (every video's boxes, from synth.json, as
              ``index --face-boxes`` reads them); generating them is not a timed stage.
  stages      per N, in a fresh work folder, each run as ``python -m dfdtrain ...`` and timed by the wall clock
              from process start to exit:
                index        ``index --dataset folder --workers 2 --face-boxes`` (default splits: 80% train, 10%
                             val, 10% test; every row gets its face boxes)
                shard        ``shard --workers 2`` of the original store, 2 MB shards (~260 videos a shard, as
                             DFDC's ~4 MB videos in 1 GB shards)
                shard_parts  ``shard --part 0/2`` and ``--part 1/2`` (``--workers 1`` each) started together,
                             into a second folder; wall time until both exit
                shard_merge  ``shard --merge`` of those parts
                train        ``train --config`` of the tiniest detector the tests use (mobilenetv2_050 + a
                             16-wide GRU, 4 frames at 32 px cropped at the face boxes, batch 2, DDP engine, one
                             process, one loader
                             worker, class weights from the shards' counts) for 50 steps (quick: 20), validating
                             on the first val shard only, so that its work does not grow with N.
                             ``first_step_seconds``: command start to the time stamp of the first ``train`` row
                             of metrics.jsonl (``train.log_every=1``: written right after step 1), i.e. config
                             load, loader construction, index.json reads, class weights and one step
                evaluate     ``evaluate`` of the best checkpoint on every test shard (sha256 checks, accounting
                             against index.json, 1,000 bootstrap resamples; quick: 200)
                calibrate    ``calibrate`` on every val shard (rewrites the checkpoint's detector.json)
                protocol     ``protocol`` with a one-set suite (the test shards) written here, bootstrap on
                             (1,000 resamples; quick: 200)
                preview      ``preview`` of the first sample of the first train shard
  figures     per stage and N: ``seconds``, ``seconds_per_1k`` (seconds x 1000 / N), ``peak_rss_mb`` (the largest
              summed PSS of the stage's processes and all their descendants, polled every 50 ms: each page counted
              once over the tree, however many forked workers share it; ``scale_process``), ``peak_rss_sum_mb``
              (the largest summed VmRSS: shared pages once per process) and ``bytes`` (the files under the stage's outputs
              modified since it started). ``ratios``: per stage, seconds per 1k at the largest N over the
              smallest N's (1 = linear, < 1 = fixed start-up cost amortised); ``rss_ratios`` likewise for peak RSS.
  check       with --quick (N = 200 and 2,000): a stage whose seconds per 1k grows by more than 1.5x fails the
              run (exit 1, naming the stage and its ratio). A stage that fails records its exit status and the
              last line of its stderr; the run goes on to the next N and exits 1 at the end.

    python benchmarks/scale.py [--quick] [--videos 1000,10000,100000] [--corpus DIR] [--work DIR]
                               [--out benchmarks/results/scale_cpu.json]

With --out, the log-log plots of seconds (dashed: linear from the smallest N) and of peak memory against N per stage
are written beside the JSON: ``scale.png`` (``scale_quick.png`` with --quick, so a quick run never replaces the committed plot).
"""

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import benchmark_parser, emit, envelope, progress, start_benchmark
from scale_process import POLL_SECONDS, StageFailed, bytes_written, file_states, run_processes

DEFAULT_VIDEOS = (1000, 10000, 100000)
QUICK_VIDEOS = (200, 2000)
QUICK_MAX_RATIO = 1.5  # quick mode: seconds per 1k at the larger N over the smaller's
# issue 36's goals at N = 100,000 against N = 1,000 (reported, not enforced: the quick check is the CI gate)
GOALS = {"seconds_per_1k_ratio_max": 1.3, "peak_rss_mb_max": 2000, "rss_ratio_max": 1.25, "first_step_seconds_max": 30}
CORPUS_FORMAT = "dfdtrain-bench-scale-corpus"
CORPUS_VERSION = 1
POOL_PERSONS = 64  # 128 distinct synth clips that the corpus copies
VIDEO = {"frames": 8, "width": 64, "height": 64, "fps": 12, "codec": "h264", "seed": 0}
GROUP_SIZE = 4  # 2 real + 2 fake per group folder
SHARD_SIZE = "2M"
STAGES = ("index", "shard", "shard_parts", "shard_merge", "train", "evaluate", "calibrate", "protocol", "preview")
# quick mode shrinks the fixed work of a stage (not what grows with N) to stay within CI's 3 minutes
FULL_WORK = {"train_steps": 50, "bootstrap": 1000}
QUICK_WORK = {"train_steps": 20, "bootstrap": 200}
TINY_DETECTOR = {"backbone": "mobilenetv2_050", "head": "gru", "head_options": {"hidden_size": 16, "hidden": [8]}}


# ---------------------------------------------------------------------------------------------------
# The corpus


def default_corpus_dir():
    if os.environ.get("DFDTRAIN_SCALE_CORPUS"):
        return os.environ["DFDTRAIN_SCALE_CORPUS"]
    cache = os.environ.get("DFDTRAIN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "dfdtrain")
    return os.path.join(cache, "scale")


def corpus_params():
    return {"format": CORPUS_FORMAT, "version": CORPUS_VERSION, "pool_persons": POOL_PERSONS,
            "group_size": GROUP_SIZE, **VIDEO}


def make_pool(folder):
    """The synth clips every corpus copies (once per corpus folder): ``folder/pool`` with its synth.json."""
    from dfdtrain.demo.synth import synthesize

    pool = folder / "pool"
    marker = pool / "synth.json"
    if marker.is_file() and json.loads(marker.read_text()).get("complete"):
        return pool
    synthesize(pool, count=2 * POOL_PERSONS, frames=VIDEO["frames"], width=VIDEO["width"], height=VIDEO["height"],
               fps=VIDEO["fps"], codec=VIDEO["codec"], seed=VIDEO["seed"], progress=False)
    return pool


def corpus_layout(count):
    """[(relative path, pool clip)] of a corpus of ``count`` videos: group g holds real/g/c0, real/g/c1,
    fake/g/c0, fake/g/c1; each copies the pool clip of its label and of person (2g + clip) mod the pool."""
    layout = []
    for number in range(count):
        group, place = divmod(number, GROUP_SIZE)
        label, clip = ("real", "fake")[place // 2], place % 2
        person = (2 * group + clip) % POOL_PERSONS
        layout.append((f"{label}/g{group:06d}/c{clip}.mp4", f"{label}/p{person:04d}/c0.mp4"))
    return layout


def ensure_corpus(root, count):
    """The folder dataset of ``count`` videos under ``root/N{count}``, generated unless a complete one with the same
    parameters is there; returns (its data folder, seconds spent generating, whether it was reused)."""
    started = time.perf_counter()
    folder = Path(root) / f"N{count}"
    record = folder / "corpus.json"
    if record.is_file():
        existing = json.loads(record.read_text())
        if existing.get("params") == corpus_params() and existing.get("videos") == count:
            return folder / "data", 0.0, True
    if folder.exists():
        shutil.rmtree(folder)  # an interrupted or older corpus: made again from scratch
    pool = make_pool(Path(root))
    pool_bytes = {}
    data = folder / "data"
    layout = corpus_layout(count)
    for relative, source in layout:
        if source not in pool_bytes:
            pool_bytes[source] = (pool / source).read_bytes()
        target = data / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(pool_bytes[source])
    # written last: its presence marks a complete corpus
    record.write_text(json.dumps({"params": corpus_params(), "videos": count, "pool": str(pool),
                                  "face_boxes": "pool/synth.json, per pool clip (files: video -> pool clip)",
                                  "files": dict(layout)}))
    return data, round(time.perf_counter() - started, 2), False


def ensure_face_boxes(root, count):
    """``root/N{count}/face_boxes.jsonl``, the corpus's face boxes as ``index --face-boxes`` reads them: each video's
    pool clip's ground-truth boxes (synth.json) on every frame. Written once per corpus (not a timed stage)."""
    folder = Path(root) / f"N{count}"
    path = folder / "face_boxes.jsonl"
    if path.is_file():
        return path
    truth = json.loads((Path(root) / "pool" / "synth.json").read_text())["files"]
    temporary = path.with_suffix(".tmp")
    with open(temporary, "w") as handle:
        for relative, source in corpus_layout(count):
            boxes = truth[source]["boxes"]
            handle.write(json.dumps({"path": relative, "frames": list(range(len(boxes))), "boxes": boxes}) + "\n")
    temporary.replace(path)
    return path


# ---------------------------------------------------------------------------------------------------
# The stages of one N


def train_config(work, steps, device):
    """The tiny detector's experiment config: ``steps`` steps of batch 2, validated on the first val shard."""
    return {
        "name": "scale", "seed": 0, "run_dir": str(work / "run"),
        "clip": {"sampler": {"num_frames": 4}, "image_size": 32, "crop": "face"},
        "data": {"train_shards": str(work / "shards" / "train-*.tar"),
                 "val_shards": str(work / "shards" / "val-000000.tar"),
                 "batch_size": 2, "num_workers": 1, "decoder": "pyav", "epoch_samples": 2 * steps,
                 "augment": {"enabled": False}},
        "model": TINY_DETECTOR,
        "train": {"engine": "ddp", "epochs": 1, "log_every": 1, "class_weights": True, "device": device},
    }


def protocol_suite(work):
    return {"name": "Scale benchmark", "description": "the generated corpus's test split",
            "root": str(work / "shards"),
            "test_sets": {"Generated (test split)": {"shards": "test-*.tar", "note": "bench scale's corpus"}}}


def stage_plan(work, data, face_boxes, device, work_sizes):
    """[(stage name, [commands run together], [output paths])] for one N, in order."""
    shards, parts, run = work / "shards", work / "shards_parts", work / "run"
    shard_common = ["--manifest", work / "manifest.jsonl", "--shard-size", SHARD_SIZE, "--quiet"]
    bootstrap = ["--bootstrap", work_sizes["bootstrap"]]
    scoring_device = ["--device", "cuda" if device == "cuda" else "cpu"]
    return [
        ("index", [["index", "--dataset", "folder", "--root", data, "--out", work / "manifest.jsonl", "--workers", 2,
                    "--face-boxes", face_boxes, "--quiet"]], [work / "manifest.jsonl", work / "manifest.jsonl.summary.json"]),
        ("shard", [["shard", "--out", shards, "--workers", 2, *shard_common]], [shards]),
        ("shard_parts", [["shard", "--out", parts, "--workers", 1, "--part", f"{part}/2", *shard_common]
                         for part in (0, 1)], [parts]),
        ("shard_merge", [["shard", "--merge", "--out", parts]], [parts]),
        ("train", [["train", "--config", work / "train.yaml", "--quiet"]], [run]),
        ("evaluate", [["evaluate", "--run", run, "--checkpoint", "best", "--shards", shards / "test-*.tar", "--out",
                       work / "evaluate", *bootstrap, *scoring_device]], [work / "evaluate"]),
        ("calibrate", [["calibrate", "--checkpoint", run, "--shards", shards / "val-*.tar", *scoring_device]], [run]),
        ("protocol", [["protocol", "--checkpoint", run, "--suite", work / "suite.yaml", "--out", work / "protocol",
                       *bootstrap, *scoring_device]], [work / "protocol"]),
        ("preview", [["preview", shards / "train-000000.tar", "--out", work / "preview.png"]], [work / "preview.png"]),
    ]


def first_step_seconds(run_dir, started_at):
    """Seconds from the train command's start to the first ``train`` row of metrics.jsonl (written after step 1)."""
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("kind") == "train":
            return round(row["time"] - started_at, 2)
    return None


def run_stages(count, data, face_boxes, work, device, work_sizes, bar):
    """Every stage at one N: {stage: figures}; a failed stage ends this N (the later ones need its output)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "train.yaml").write_text(json.dumps(train_config(work, work_sizes["train_steps"], device.type)))
    (work / "suite.yaml").write_text(json.dumps(protocol_suite(work)))
    figures = {}
    for stage, commands, outputs in stage_plan(work, data, face_boxes, device.type, work_sizes):
        bar.set_description(f"N={count} {stage}")
        before = file_states(outputs)
        try:
            seconds, memory, started_at = run_processes(stage, commands, work / "logs", work)
        except StageFailed as failure:
            figures[stage] = {"rc": failure.rc, "error": failure.last_line}
            bar.update(len(STAGES) - len(figures) + 1)
            return figures, str(failure)
        figures[stage] = {"seconds": round(seconds, 2), "seconds_per_1k": round(seconds * 1000 / count, 3),
                          "peak_rss_mb": memory.peak_mb, "peak_rss_sum_mb": memory.peak_sum_mb,
                          "bytes": bytes_written(outputs, before)}
        if stage == "train":
            figures[stage]["first_step_seconds"] = first_step_seconds(work / "run", started_at)
        bar.update(1)
    return figures, None


# ---------------------------------------------------------------------------------------------------
# Ratios, the quick check, the plot


def ratios_of(stages, counts, key):
    """Per stage: ``key`` at the largest N over the smallest N's (both measured), else None."""
    smallest, largest = str(min(counts)), str(max(counts))
    ratios = {}
    for stage in STAGES:
        low, high = stages.get(stage, {}).get(smallest, {}), stages.get(stage, {}).get(largest, {})
        ratios[stage] = round(high[key] / low[key], 3) if key in low and key in high and low[key] else None
    return ratios


def goal_check(stages, counts, ratios, rss_ratios):
    """Issue 36's goals on these figures (meant for N = 1,000 against 100,000): met or not, per goal."""
    largest = str(max(counts))
    measured = [stages[stage][largest] for stage in STAGES if "seconds" in stages.get(stage, {}).get(largest, {})]
    first_step = stages.get("train", {}).get(largest, {}).get("first_step_seconds")
    return {
        "seconds_per_1k_ratio<=1.3": all(value is not None and value <= GOALS["seconds_per_1k_ratio_max"]
                                         for value in ratios.values()),
        "peak_rss_mb<=2000": all(entry["peak_rss_mb"] <= GOALS["peak_rss_mb_max"] for entry in measured),
        "rss_ratio<=1.25": all(value is not None and value <= GOALS["rss_ratio_max"] for value in rss_ratios.values()),
        "first_step_seconds<=30": first_step is not None and first_step <= GOALS["first_step_seconds_max"],
    }


def quick_failures(ratios):
    """Lines naming each stage whose per-video cost grew by more than QUICK_MAX_RATIO (or was not measured)."""
    return [f"{stage}: seconds per 1k videos grew {ratio}x from the smaller N to the larger (limit {QUICK_MAX_RATIO})"
            if ratio is not None else f"{stage}: not measured at both N"
            for stage, ratio in ratios.items() if ratio is None or ratio > QUICK_MAX_RATIO]


def notes_for(goals, quick_check, errors):
    """Lines for people (RESULTS.md): what the ratios mean, the goals met or not, the quick check, the failures."""
    met = "; ".join(f"{goal} {'met' if ok else 'NOT met'}" for goal, ok in goals["met"].items())
    lines = ["ratios: seconds per 1k (and peak memory) at the largest N over the smallest N's; 1 = linear (flat), "
             "below 1 = a fixed start-up cost spread over more videos",
             "peak memory: the peak summed PSS of the stage's process tree (a page shared by forked workers counted "
             "once; the summed VmRSS, which counts it per process, is peak_rss_sum_mb in the JSON)",
             f"issue 36's goals ({goals['compared']}): {met}"]
    if quick_check:
        lines.append(f"quick check (seconds per 1k ratio <= {QUICK_MAX_RATIO} per stage): "
                     + ("passed" if quick_check["passed"] else "FAILED: " + "; ".join(quick_check["failures"])))
    return lines + [f"error: {error}" for error in errors]


def plot_path(out, quick):
    return Path(out).parent / ("scale_quick.png" if quick else "scale.png")


def draw_plot(stages, counts, path):
    """Two log-log panels against N, a line per stage: wall seconds (dashed: linear from the smallest N) and peak
    memory (PSS of the process tree; flat is the goal)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (time_axes, memory_axes) = plt.subplots(1, 2, figsize=(13, 5.5))
    for stage in STAGES:
        measured = [(count, stages[stage][str(count)]) for count in counts
                    if "seconds" in stages.get(stage, {}).get(str(count), {})]
        if not measured:
            continue
        line, = time_axes.plot([count for count, _ in measured], [entry["seconds"] for _, entry in measured],
                               marker="o", label=stage)
        first_count, first = measured[0]
        time_axes.plot([count for count, _ in measured], [first["seconds"] * count / first_count for count, _ in measured],
                       linestyle="--", color=line.get_color(), alpha=0.5, linewidth=1)
        memory_axes.plot([count for count, _ in measured], [entry["peak_rss_mb"] for _, entry in measured],
                         marker="o", color=line.get_color(), label=stage)
    for axes, label, title in ((time_axes, "wall seconds", "seconds per stage (dashed: linear from the smallest N)"),
                               (memory_axes, "peak memory, MB (PSS of the process tree)", "peak memory per stage")):
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("videos (N)")
        axes.set_ylabel(label)
        axes.set_title(title, fontsize=10)
        axes.grid(True, which="both", alpha=0.3)
    time_axes.legend(fontsize=8, ncol=2)
    figure.suptitle("dfdtrain bench scale")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


# ---------------------------------------------------------------------------------------------------


def video_counts(text):
    counts = sorted({int(item) for item in text.split(",") if item.strip()})
    bad = [count for count in counts if count < 2 * GROUP_SIZE * 10 or count % GROUP_SIZE]
    if bad or len(counts) < 1:
        raise SystemExit(f"scale: --videos {text}: give sizes that are multiples of {GROUP_SIZE} and at least "
                         f"{2 * GROUP_SIZE * 10} (enough groups for train, val and test)")
    return counts


def main(argv=None):
    parser = benchmark_parser(__doc__, f"--videos {','.join(map(str, QUICK_VIDEOS))}, {QUICK_WORK['train_steps']} "
                                       f"train steps, {QUICK_WORK['bootstrap']} bootstrap resamples; fails when a "
                                       f"stage's seconds per 1k videos grows more than {QUICK_MAX_RATIO}x (CI)")
    parser.add_argument("--videos", default=",".join(map(str, DEFAULT_VIDEOS)),
                        help="comma-separated corpus sizes N (default 1000,10000,100000; --quick: 200,2000)")
    parser.add_argument("--corpus", default=default_corpus_dir(),
                        help="cache of generated corpora, one per N (default $DFDTRAIN_SCALE_CORPUS, else "
                             "~/.cache/dfdtrain/scale)")
    parser.add_argument("--work", help="folder for the stages' outputs, one sub-folder per N, kept (default: a temp "
                                       "folder, removed at the end)")
    args, started, device = start_benchmark(parser, argv)
    counts = list(QUICK_VIDEOS) if args.quick else video_counts(args.videos)
    work_sizes = QUICK_WORK if args.quick else FULL_WORK
    work_root = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="dfdtrain-scale-"))
    stages, corpus, errors = {stage: {} for stage in STAGES}, {}, []
    try:
        with progress(total=len(counts) * len(STAGES), desc="scale", unit="stage") as bar:
            for count in counts:
                bar.set_description(f"N={count} corpus")
                data, seconds, reused = ensure_corpus(args.corpus, count)
                corpus[str(count)] = {"path": str(data), "generated_seconds": seconds, "reused": reused}
                work = work_root / f"N{count}"
                if work.exists():
                    shutil.rmtree(work)  # a stage's outputs from an earlier run would change what it does
                figures, error = run_stages(count, data, ensure_face_boxes(args.corpus, count), work, device,
                                            work_sizes, bar)
                for stage, values in figures.items():
                    stages[stage][str(count)] = values
                if error:
                    errors.append(f"N={count} {error}")
                if not args.work:
                    shutil.rmtree(work, ignore_errors=True)  # the shards of 100k videos are ~1.6 GB
    finally:
        if not args.work:
            shutil.rmtree(work_root, ignore_errors=True)
    ratios = ratios_of(stages, counts, "seconds_per_1k")
    rss_ratios = ratios_of(stages, counts, "peak_rss_mb")
    failures = quick_failures(ratios) if args.quick and not errors else []
    goals = {"limits": GOALS, "met": goal_check(stages, counts, ratios, rss_ratios),
             "compared": f"N={max(counts)} against N={min(counts)}"}
    quick_check = {"failures": failures, "passed": not errors and not failures} if args.quick else None
    result = envelope(
        "scale", device,
        {"quick": args.quick, "videos": counts, "video": {key: VIDEO[key] for key in ("frames", "width", "height",
                                                                                      "codec")},
         "group_size": GROUP_SIZE, "pool_clips": 2 * POOL_PERSONS, "shard_size": SHARD_SIZE,
         "workers": {"index": 2, "shard": 2, "shard_parts": "2 parts x 1"}, "detector": TINY_DETECTOR, **work_sizes,
         "poll_seconds": POLL_SECONDS, "quick_max_ratio": QUICK_MAX_RATIO},
        started,
        corpus=corpus, stages=stages, ratios=ratios, rss_ratios=rss_ratios, goals=goals, errors=errors,
        quick_check=quick_check, notes=notes_for(goals, quick_check, errors))
    emit(result, args.out)
    if args.out:
        draw_plot(stages, counts, plot_path(args.out, args.quick))
    if errors:
        print(f"scale: error: {len(errors)} stage(s) failed: {'; '.join(errors)}", file=sys.stderr)
        return 1
    if failures:
        print(f"scale: error: per-video cost grew with N: {'; '.join(failures)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
