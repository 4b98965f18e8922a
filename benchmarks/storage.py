"""Storage: our shards (original bytes) vs PNG face-crop stores, measured on real videos.

DeepfakeBench and the DFDC winner keep face crops as one PNG per frame on disk. This benchmark indexes the
real fixtures, shards them (with MTCNN boxes on sampled frames), then builds the PNG stores in memory from
the same boxes (linearly interpolated between sampled frames) and compares bytes:
  * png_every_frame: every frame's face crop, box + 1/3 margin per side (DFDC winner style), native size;
  * png_32_frames_256: 32 frames per video, crops resized to 256x256 (DeepfakeBench's default store).

    python benchmarks/storage.py --fixtures ../shared/fixtures --out benchmarks/results/storage.json
"""

import argparse
import io
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np
from PIL import Image
from tqdm import tqdm

from common import add_fixtures_argument, emit, envelope
from dfdtrain.data.ingest.datasets import IndexOptions
from dfdtrain.data.ingest.manifest import build_manifest, write_manifest
from dfdtrain.data.shards.writer import write_shards


def interpolate_boxes(faces, frame_count, width, height):
    """One [x1, y1, x2, y2] per frame from boxes on sampled frames (largest face); centre square if none."""
    known = [(frame, boxes[0][:4]) for frame, boxes in zip(faces["frames"], faces["boxes"]) if boxes]
    if not known:
        side = min(width, height)
        box = [(width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2]
        return np.tile(box, (frame_count, 1))
    frames = np.array([frame for frame, _ in known], dtype=float)
    boxes = np.array([box for _, box in known], dtype=float)
    positions = np.arange(frame_count, dtype=float)
    return np.stack([np.interp(positions, frames, boxes[:, column]) for column in range(4)], axis=1)


def crop_with_margin(frame, box, margin=1 / 3):
    x1, y1, x2, y2 = box
    pad_x, pad_y = (x2 - x1) * margin, (y2 - y1) * margin
    height, width = frame.shape[:2]
    left, top = int(max(0, x1 - pad_x)), int(max(0, y1 - pad_y))
    right, bottom = int(min(width, x2 + pad_x)), int(min(height, y2 + pad_y))
    return frame[top:bottom, left:right]


def png_bytes(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.tell()


def png_store_sizes(job):
    """(bytes of every frame's crop as PNG, bytes of 32 crops at 256x256 as PNG) for one video."""
    path, faces, frame_count, width, height = job
    boxes = interpolate_boxes(faces, frame_count, width, height)
    every_frame, sampled = 0, 0
    sampled_frames = set(np.linspace(0, frame_count - 1, 32).round().astype(int).tolist())
    with av.open(path) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index >= frame_count:
                break
            crop = crop_with_margin(frame.to_ndarray(format="rgb24"), boxes[index])
            every_frame += png_bytes(crop)
            if index in sampled_frames:
                sampled += png_bytes(np.asarray(Image.fromarray(crop).resize((256, 256), Image.BILINEAR)))
    return every_frame, sampled


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_fixtures_argument(parser)
    parser.add_argument("--out", help="write the JSON result here too")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--face-frames", type=int, default=16)
    parser.add_argument("--limit", type=int, default=0, help="only the first N videos (quick mode)")
    parser.add_argument("--quick", action="store_true", help="1 video, faces on 4 frames, no worker pool (CI)")
    args = parser.parse_args(argv)
    if args.quick:
        args.limit, args.face_frames, args.workers = 1, 4, 1
    started = time.time()
    fixtures = Path(args.fixtures)
    rows = []
    for dataset, options in (("ffpp", IndexOptions(ffpp_splits=str(fixtures / "labels/ffpp"))),
                             ("dfdc", IndexOptions())):
        rows += build_manifest(dataset, fixtures / dataset, options, progress=False)[0]
    if args.limit:
        rows = rows[: args.limit]
    with tempfile.TemporaryDirectory() as folder:
        manifest = Path(folder) / "manifest.jsonl"
        write_manifest(manifest, rows, {})
        index = write_shards(manifest, Path(folder) / "shards", workers=args.workers, face_detector="mtcnn",
                             face_frames=args.face_frames, allow_leakage=True)
        shard_bytes = index["totals"]["bytes"]
        import webdataset as wds

        faces_of = {sample["__key__"]: json.loads(sample["json"])["faces"] for sample in
                    wds.WebDataset(sorted(str(p) for p in (Path(folder) / "shards").glob("*.tar")), shardshuffle=False)}
    jobs = [(os.path.join(row["root"], row["path"]), faces_of[row["key"]], row["frames"], row["width"], row["height"])
            for row in rows]
    if args.workers > 1:
        with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
            sizes = list(tqdm(pool.imap(png_store_sizes, jobs), total=len(jobs), desc="png stores", unit="video"))
    else:  # one worker: no pool to start (spawned workers re-import everything)
        sizes = [png_store_sizes(job) for job in tqdm(jobs, desc="png stores", unit="video")]
    by_dataset = {}
    for dataset in sorted({row["dataset"] for row in rows}):
        chosen = [i for i, row in enumerate(rows) if row["dataset"] == dataset]
        shard_share = sum(rows[i]["bytes"] for i in chosen) / sum(row["bytes"] for row in rows) * shard_bytes
        by_dataset[dataset] = compare([rows[i] for i in chosen], [sizes[i] for i in chosen], shard_share)
    result = envelope("storage", "cpu", {"quick": args.quick, "limit": args.limit, "face_frames": args.face_frames,
                                         "face_detector": "mtcnn (CPU)"},
                      started, **compare(rows, sizes, shard_bytes), by_dataset=by_dataset)
    return emit(result, args.out)


def compare(rows, sizes, shard_bytes):
    """Byte counts and ratios; per dataset, the shard bytes are its share of the tars (by original bytes)."""
    every_frame = sum(size[0] for size in sizes)
    sampled = sum(size[1] for size in sizes)
    original = sum(row["bytes"] for row in rows)
    return {
        "videos": len(rows),
        "frames": sum(row["frames"] for row in rows),
        "original_bytes": original,
        "shard_bytes": int(shard_bytes),
        "png_every_frame_bytes": every_frame,
        "png_32_frames_256_bytes": sampled,
        "ratio_png_every_frame_to_shards": round(every_frame / shard_bytes, 2),
        "ratio_png_32_frames_256_to_shards": round(sampled / shard_bytes, 2),
        "shard_overhead": round(shard_bytes / original - 1, 4),
    }


if __name__ == "__main__":
    sys.exit(main())
