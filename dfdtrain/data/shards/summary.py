"""index.json's content and its console report: what a shard folder holds and what the runs that made it did.

``build_index`` makes index.json from the shards' records (per shard its record, per split the totals, the
skipped videos, the face-clip fidelity, the seconds per stage); ``run_summary`` is one run's entry in its
``runs``, ``earlier_runs`` the runs an index.json being replaced already counted; ``format_index`` is the text
``dfdtrain shard`` prints. (``dfdtrain.data.shards.catalog`` reads index.json back for the loaders.)
"""

import collections
import os

from dfdtrain import __version__
from dfdtrain.core.fileio import read_json

# a face-clip video's seconds, as make_face_clips counts them
STAGES = ("decode", "detect", "track", "encode", "landmarks", "verify")


def face_clip_summary(meta):
    """What index.json keeps of one face-clip sample: sizes, tracks, fidelity (vs the source crops), whether its
    face is doubtful and the tracks dropped, by reason."""
    return {"key": meta["key"], "path": os.path.join(meta.get("root", ""), meta.get("path", "")),
            "source_bytes": meta["source"]["bytes"], "clip_bytes": meta["bytes"], "tracks": len(meta["tracks"]),
            "no_face": meta["no_face"], "doubtful": meta.get("doubtful"),
            "dropped_tracks": meta.get("dropped_track_reasons", {}), **meta["fidelity"]}


def face_clip_totals(summaries):
    """One shard's face-clip totals, from its samples' summaries: what its record and index.json entry keep (a
    resumed shard adds them to the run's without reading its samples)."""
    worst = max(summaries, key=lambda item: item["mean_abs_error"])
    dropped = collections.Counter()
    for item in summaries:
        dropped.update(item.get("dropped_tracks", {}))
    return {"videos": len(summaries), "no_face": sum(item["no_face"] for item in summaries),
            "tracks": sum(item["tracks"] for item in summaries),
            "source_bytes": sum(item["source_bytes"] for item in summaries),
            "clip_bytes": sum(item["clip_bytes"] for item in summaries),
            "psnr_db_sum": sum(item["psnr_db"] for item in summaries),
            "psnr_db_min": min(item["psnr_db"] for item in summaries),
            "mean_abs_error_sum": sum(item["mean_abs_error"] for item in summaries),
            "mean_abs_error_max": worst["mean_abs_error"], "worst_key": worst["key"],
            "dropped_tracks": dict(sorted(dropped.items())),
            "doubtful": [{"key": item["key"], "path": item.get("path"), "reason": item["doubtful"]}
                         for item in summaries if item.get("doubtful")]}


def aggregate_face_clips(shard_totals):
    """index.json's ``face_clips``: totals and the fidelity of the stored clips vs the decoded source crops, over
    the shards' ``face_clip_totals`` (per video it is in each sample's json)."""
    if not shard_totals:
        return None
    videos = sum(item["videos"] for item in shard_totals)
    worst = max(shard_totals, key=lambda item: item["mean_abs_error_max"])
    dropped = collections.Counter()
    for item in shard_totals:
        dropped.update(item.get("dropped_tracks", {}))
    return {"videos": videos, "no_face": sum(item["no_face"] for item in shard_totals),
            "doubtful": sum(len(item.get("doubtful", [])) for item in shard_totals),
            "tracks": sum(item["tracks"] for item in shard_totals),
            "dropped_tracks": dict(sorted(dropped.items())),
            "source_bytes": sum(item["source_bytes"] for item in shard_totals),
            "clip_bytes": sum(item["clip_bytes"] for item in shard_totals),
            "psnr_db_mean": round(sum(item["psnr_db_sum"] for item in shard_totals) / videos, 3),
            "psnr_db_min": min(item["psnr_db_min"] for item in shard_totals),
            "mean_abs_error_mean": round(sum(item["mean_abs_error_sum"] for item in shard_totals) / videos, 4),
            "mean_abs_error_max": worst["mean_abs_error_max"], "worst_key": worst["worst_key"]}


def build_index(names, records, options, source, runs):
    """index.json of the shards ``names`` (plan order) from their records; ``runs``: what each run that made the
    folder did (``run_summary``), the last one this run."""
    # each shard's record but its skipped videos (all in "skipped"): what a re-run resumes from
    shards = [{key: value for key, value in records[name].items() if key != "skipped"} for name in names]
    skipped = [item for name in names for item in records[name]["skipped"]]
    per_split = collections.defaultdict(lambda: {"shards": 0, "samples": 0, "bytes": 0, "labels": collections.Counter()})
    for shard in shards:
        totals = per_split[shard["split"]]
        totals["shards"] += 1
        totals["samples"] += shard["samples"]
        totals["bytes"] += shard["bytes"]
        totals["labels"].update(shard["labels"])
    index = {
        "format": "dfdtrain-shards/1",
        "created_by": f"dfdtrain {__version__}",
        "manifest": source,
        "store": options["store"],
        "options": options,
        "shards": shards,
        "splits": {split: {**totals, "labels": dict(sorted(totals["labels"].items()))}
                   for split, totals in per_split.items()},
        # seconds: every run's wall seconds, added up; resumed_shards: what the last run kept
        "totals": {"shards": len(shards), "samples": sum(s["samples"] for s in shards),
                   "bytes": sum(s["bytes"] for s in shards), "skipped": len(skipped),
                   "resumed_shards": runs[-1]["resumed_shards"],
                   "seconds": round(sum(run["seconds"] for run in runs), 2)},
        "runs": runs,
        "skipped": skipped,
    }
    if options.get("landmarks"):  # the landmark model of every face track's points (faces.landmarks.describe)
        index["landmarks"] = options["landmarks"]
    shard_face_clips = [records[name]["face_clips"] for name in names if records[name].get("face_clips")]
    face_clips = aggregate_face_clips(shard_face_clips)
    if face_clips:
        index["face_clips"] = face_clips
        # the videos whose best face track is not to be trusted unseen: 'dfdtrain preview FOLDER --doubtful'
        index["doubtful_faces"] = [item for totals in shard_face_clips for item in totals.get("doubtful", [])]
    # what the shards cost to write, whichever run wrote them (each shard's record keeps its own)
    stage_seconds = collections.Counter()
    for name in names:
        stage_seconds.update(records[name].get("stage_seconds", {}))
    if stage_seconds:  # where the seconds of the videos went, summed over workers and runs
        index["totals"]["stage_seconds"] = {stage: round(stage_seconds[stage], 2) for stage in STAGES
                                            if stage_seconds.get(stage)}
    detector_frames = sum(records[name].get("detector_frames", 0) for name in names)
    if detector_frames:  # frames the face detector saw
        index["totals"]["detector_frames"] = detector_frames
    shared = runs[-1].get("shared_detector")
    if shared:
        index["totals"]["shared_detector"] = shared
    return index


def run_summary(seconds, written, resumed, counts, parts=None):
    """One run's entry in index.json's ``runs``: wall seconds, shards written and kept, the written videos'
    seconds per stage, and the shared detector's batching (``counts`` from ``write_pending``)."""
    summary = {"seconds": round(seconds, 2), "written_shards": written, "resumed_shards": resumed,
               "stage_seconds": {stage: round(counts[stage], 2) for stage in STAGES if counts.get(stage)}}
    if counts.get("detector_batches"):
        summary["shared_detector"] = {
            "batches": counts["detector_batches"], "frames": counts["detector_frames"],
            "frames_per_batch": round(counts["detector_frames"] / counts["detector_batches"], 1)}
    if parts:
        summary["parts"] = parts
    return summary


def earlier_runs(out_dir, resumed, options):
    """The ``runs`` of the index.json this run replaces, when this run kept shards and that index was made with
    the same options (else its runs made what is gone); an index.json of a version before ``runs`` stands as one
    run of its totals."""
    if not resumed:
        return []
    try:
        index = read_json(out_dir / "index.json")
        if index.get("options") != options:
            return []
        runs = index.get("runs")
        if isinstance(runs, list) and all(isinstance(run, dict) and isinstance(run.get("seconds"), (int, float))
                                          for run in runs):
            return runs
        totals = index["totals"]
        return [run_summary(float(totals["seconds"]), int(totals["shards"]) - int(totals["resumed_shards"]),
                            int(totals["resumed_shards"]), totals.get("stage_seconds", {}))]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []


def format_index(index):
    lines = list(index.get("notes", []))  # what the run cleaned up first, as it did it first
    lines.append(f"{index['totals']['samples']} videos in {index['totals']['shards']} shards, "
                 f"{index['totals']['bytes'] / 1e6:.1f} MB ({index['totals']['resumed_shards']} shards kept from an "
                 f"earlier run)")
    for split, totals in index["splits"].items():
        labels = ", ".join(f"{'fake' if label == '1' else 'real'} {count}" for label, count in totals["labels"].items())
        lines.append(f"  {split:<6} {totals['shards']:>4} shards {totals['samples']:>7} videos ({labels})")
    face_clips = index.get("face_clips")
    if face_clips:
        lines.append(f"face clips: {face_clips['tracks']} tracks, {face_clips['clip_bytes'] / 1e6:.1f} MB from "
                     f"{face_clips['source_bytes'] / 1e6:.1f} MB of source video; fidelity vs the source crops: "
                     f"PSNR {face_clips['psnr_db_mean']:.1f} dB, "
                     f"mean error {face_clips['mean_abs_error_mean']:.2f}/255 "
                     f"(worst {face_clips['mean_abs_error_max']:.2f}); {face_clips['no_face']} without a face, "
                     f"{face_clips.get('doubtful', 0)} doubtful")
        if face_clips.get("dropped_tracks"):
            lines.append(f"face tracks dropped: {sum(face_clips['dropped_tracks'].values())} (" + ", ".join(
                f"{reason} {count}" for reason, count in face_clips["dropped_tracks"].items()) + ")")
        landmarks = index.get("landmarks")
        if landmarks:
            versions = ", ".join(f"{package} {version}" for package, version in landmarks.get("version", {}).items())
            lines.append(f"landmarks: {landmarks['model']}, {landmarks['points']} points per stored frame ({versions})")
        doubtful = index.get("doubtful_faces") or []
        if doubtful:
            lines.append(f"doubtful faces: {len(doubtful)} video(s) whose best face track is not to be trusted unseen "
                         f"(look at them: dfdtrain preview SHARD_FOLDER --doubtful --out doubtful.png):")
            lines += [f"  {item['key']}: {item['reason']}" for item in doubtful[:10]]
            if len(doubtful) > 10:
                lines.append(f"  ... ({len(doubtful) - 10} more in index.json's doubtful_faces)")
    stage_seconds = index["totals"].get("stage_seconds")
    if stage_seconds:  # the written videos' seconds, summed over processes: where a faster run must save
        total = sum(stage_seconds.values()) or 1
        lines.append("seconds per stage: " + ", ".join(f"{stage} {value:.1f} ({value / total:.0%})"
                                                       for stage, value in stage_seconds.items()))
    shared = index["totals"].get("shared_detector")
    if shared:
        lines.append(f"shared face detector: {shared['frames']} frames in {shared['batches']} batches "
                     f"({shared['frames_per_batch']} per batch)")
    if index.get("parts"):
        lines.append(f"merged from {len(index['parts'])} parts: " + ", ".join(
            f"{part['part']} ({part['samples']} videos, {part['seconds']:.0f} s on {part['host']})"
            for part in index["parts"][:8]) + (", ..." if len(index["parts"]) > 8 else ""))
    if index["skipped"]:
        lines.append(f"skipped {len(index['skipped'])}:")
        lines += [f"  {item['path']}: {item['reason']}" + (f" ({item['detail']})" if item["detail"] else "")
                  for item in index["skipped"][:10]]
    return "\n".join(lines)
