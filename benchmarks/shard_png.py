"""``bench shard``'s store comparison (issues 15 and 29): per video, track 0 of its face clip against a
DeepfakeBench-style PNG store of the same track (32 spread frames, aligned crop at 256 px, one PNG file each) and
against the original video: bytes, and one-core load time of 16 frames at 224 px (median of the repeats, the stores
interleaved); and the groups the videos are summed over (dataset; dfdc, FF++ raw/c23, FF++ c40).
"""

import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

PNG_FRAMES, PNG_SIZE = 32, 256  # DeepfakeBench's default store
LOAD_FRAMES, LOAD_SIZE = 16, 224


def dataset_of(path):
    """dfdc or ffpp: a fixture's first folder, or the prefix its copy is named with."""
    return "dfdc" if Path(path).parts[0] == "dfdc" or Path(path).name.startswith("dfdc_") else "ffpp"


def storage_group(relative):
    """dfdc, raw/c23 or c40 (FF++ by its compression folder): the groups of issue 29's storage goals."""
    if dataset_of(relative) == "dfdc":
        return "dfdc"
    parts = Path(relative).parts
    return "c40" if "c40" in parts else "raw/c23" if "c23" in parts or "raw" in parts else None


def resize_frames(frames):
    """[T,H,W,3] uint8 -> [T,224,224,3] uint8 with the loaders' own resize (``crop_and_resize``, whole frame)."""
    import torch

    from dfdtrain.data.faces.crops import crop_and_resize

    frames = torch.from_numpy(np.ascontiguousarray(frames))
    return crop_and_resize(frames, [[0, 0, frames.shape[2], frames.shape[1]]] * len(frames), LOAD_SIZE)


def build_png_store(source, name, track, folder):
    """DeepfakeBench's store of one track: 32 spread frames, aligned crop at 256 px, one PNG file each."""
    from PIL import Image

    from dfdtrain.data.decode.decoders import build_decoder
    from dfdtrain.data.faces.clip_encoding import crop_window
    from dfdtrain.data.decode.sampler import uniform_indices

    positions = uniform_indices(len(track["source_frames"]), PNG_FRAMES)
    frames = build_decoder("pyav").read(source, [track["source_frames"][p] for p in positions], name=name)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, (rgb, position) in enumerate(zip(frames, positions)):
        path = folder / f"{number:03d}.png"
        Image.fromarray(crop_window(rgb, track["windows"][position], PNG_SIZE)).save(path, format="PNG")
        paths.append(path)
    return paths


def load_png_clip(paths):
    from PIL import Image

    chosen = [paths[i] for i in np.linspace(0, len(paths) - 1, LOAD_FRAMES).round().astype(int)]
    return resize_frames(np.stack([np.asarray(Image.open(path).convert("RGB")) for path in chosen]))


def load_sampled(decoder, data, name, frame_count):
    """A face clip's or an original video's 16 uniform (evaluation) frames, decoded from its bytes, resized."""
    from dfdtrain.data.decode.sampler import uniform_indices

    return resize_frames(decoder.read(data, uniform_indices(frame_count, LOAD_FRAMES), name=name))



def png_comparison(shard_dirs, rows, fixture_of, repeats, folder, original_repeats):
    """Per video: track 0's clip vs its PNG store and the original video, bytes and one-core load time (median of
    ``repeats``; the original's of the first ``original_repeats``: a second or more per read, without warm-up)."""
    import torch
    import webdataset as wds

    from dfdtrain.data.decode.decoders import build_decoder

    by_key = {row["key"]: row for row in rows}
    samples = [(sample["__key__"], json.loads(sample["json"]), sample) for sample in
               wds.WebDataset(sorted(str(path) for shard_dir in shard_dirs for path in shard_dir.glob("*.tar")),
                              shardshuffle=False)]
    decoder = build_decoder("pyav", thread_count=1)  # one core
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    videos, loads = [], []
    try:
        for key, meta, sample in samples:
            track = meta["tracks"][0]
            row = by_key[key]
            source = os.path.join(row["root"], row["path"])
            paths = build_png_store(source, row["path"], track, folder / key)
            clip, clip_name = sample[track["member"]], f"{key}.{track['member']}"
            original = Path(source).read_bytes()  # decoded from memory, as the clip is
            videos.append({"key": key, "video": row["path"], "fixture": fixture_of[row["path"]],
                           "group": storage_group(fixture_of[row["path"]]), "source_width": meta["source"]["width"],
                           "source_height": meta["source"]["height"], "clip_size": track["size"],
                           "clip_frames": track["frames"], "tracks": len(meta["tracks"]),
                           "png_bytes": sum(path.stat().st_size for path in paths),
                           "clip_bytes": len(clip), "sample_clip_bytes": meta["bytes"], "original_bytes": len(original),
                           "mean_abs_error": track["fidelity"]["mean_abs_error"]})
            loads.append((paths, clip, clip_name, track["frames"], original, row["path"], meta["source"]["frames"]))
        for paths, clip, clip_name, frame_count, *_ in loads:  # warm-up: file cache, codec set-up
            load_png_clip(paths)
            load_sampled(decoder, clip, clip_name, frame_count)
        times = [([], [], []) for _ in loads]
        for repeat in range(repeats):
            for (paths, clip, clip_name, frame_count, original, name, source_frames), (png_s, clip_s, original_s) \
                    in zip(loads, times):
                started = time.perf_counter()
                assert load_png_clip(paths).shape == (LOAD_FRAMES, LOAD_SIZE, LOAD_SIZE, 3)
                png_s.append(time.perf_counter() - started)
                started = time.perf_counter()
                assert load_sampled(decoder, clip, clip_name, frame_count).shape[0] == LOAD_FRAMES
                clip_s.append(time.perf_counter() - started)
                if repeat >= original_repeats:
                    continue
                started = time.perf_counter()
                assert load_sampled(decoder, original, name, source_frames).shape[0] == LOAD_FRAMES
                original_s.append(time.perf_counter() - started)
    finally:
        torch.set_num_threads(threads)
    for video, (png_s, clip_s, original_s) in zip(videos, times):
        video["png_load_ms"] = round(1000 * statistics.median(png_s), 2)
        video["clip_load_ms"] = round(1000 * statistics.median(clip_s), 2)
        video["original_load_ms"] = round(1000 * statistics.median(original_s), 2)
        video["png_load_over_clip_load"] = round(video["png_load_ms"] / video["clip_load_ms"], 3)
        video["original_load_over_clip_load"] = round(video["original_load_ms"] / video["clip_load_ms"], 2)
        video["clip_bytes_over_png"] = round(video["clip_bytes"] / video["png_bytes"], 3)
        video["clip_bytes_over_original"] = round(video["sample_clip_bytes"] / video["original_bytes"], 3)
    return videos


def summarise_png(videos):
    png_ms, clip_ms = sum(v["png_load_ms"] for v in videos), sum(v["clip_load_ms"] for v in videos)
    png_bytes, clip_bytes = sum(v["png_bytes"] for v in videos), sum(v["clip_bytes"] for v in videos)
    return {"videos": len(videos), "png_load_ms_mean": round(png_ms / len(videos), 2),
            "clip_load_ms_mean": round(clip_ms / len(videos), 2),
            "png_clips_per_s_per_core": round(1000 * len(videos) / png_ms, 2),
            "clip_clips_per_s_per_core": round(1000 * len(videos) / clip_ms, 2),
            "png_load_over_clip_load": round(png_ms / clip_ms, 3),
            "png_load_over_clip_load_min_per_video": min(v["png_load_over_clip_load"] for v in videos),
            "png_bytes": png_bytes, "clip_bytes": clip_bytes, "clip_bytes_over_png": round(clip_bytes / png_bytes, 3),
            "clip_bytes_over_png_max_per_video": max(v["clip_bytes_over_png"] for v in videos),
            "frames_kept": {"png": PNG_FRAMES, "clip": "every frame of the track"}}
