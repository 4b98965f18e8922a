"""A small synthetic deepfake video dataset: the built-in default for demos, tests and smoke runs.

Layout (what the ``folder`` dataset indexer reads; the first subfolder is the leakage group)::

    OUT/real/p0000/c0.mp4   OUT/fake/p0000/c0.mp4   OUT/real/p0001/c0.mp4   ...
    OUT/synth.json

synth.json holds the generation parameters and, per file (relative path): label, person, frames, fps,
width, height, codec, bytes, ``boxes`` (the ground-truth face box per frame, [x1, y1, x2, y2] ints, x2/y2
exclusive) and ``inner_faces`` (per frame [cx, cy, rx, ry], the ellipse a fake swaps; the same region in a
real clip). It is written first with ``"complete": false`` and only the planned files, and rewritten with
``"complete": true`` and everything else once all videos exist.

Every clip shows a face-like head (skin ellipse, hair cap, blinking eyes, eyebrows, nose shading, a
talking mouth) moving smoothly over a drifting textured background, with brightness drift and sensor
noise. A real and a fake clip of one person share the identity (skin tone, face shape, eye spacing...)
but not the motion or background. A fake replaces the inner face with a blurred, colour-shifted copy
blended in with a sharp-ish mask, which leaves a seam ring; the blend strength and colour flicker a
little from frame to frame. That is the signal a small CNN has to learn.

Frames are rendered with numpy (vectorised per frame: dfdtrain.demo.plans, dfdtrain.demo.render) and encoded
with PyAV (dfdtrain.demo.encode): h264 (libx264, .mp4) or vp9 (libvpx-vp9, .webm). The same arguments give
byte-identical files on the same machine.
"""

import glob
import math
import os
import sys
import time

import numpy as np
from tqdm import tqdm

from dfdtrain.core.errors import DfdError
from dfdtrain.core.fileio import read_json, write_json
from dfdtrain.demo.encode import CODECS, encode_video
from dfdtrain.demo.plans import make_clip_plan, make_person
from dfdtrain.demo.render import render_clip

SYNTH_FORMAT = "dfdtrain-synth"
SYNTH_VERSION = 1
METADATA_NAME = "synth.json"
LABELS = ("real", "fake")


def _check_parameters(count, frames, width, height, fps, codec, gop):
    for name, value, least in (("count", count, 2), ("frames", frames, 1), ("fps", fps, 1), ("gop", gop, 1)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise DfdError(f"{name}: must be an integer >= {least} (got {value!r})")
    for name, value in (("width", width), ("height", height)):
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise DfdError(f"{name}: must be a positive integer (got {value!r})")
        if value % 2:
            raise DfdError(f"{name}: must be even for yuv420p video (got {value})")
        if value < 16:
            raise DfdError(f"{name}: must be at least 16 pixels to draw a face (got {value})")
    if codec not in CODECS:
        raise DfdError(f"codec: unknown codec {codec!r} (known: {', '.join(CODECS)})")


def planned_files(count, codec):
    """[(relative path, label, person, person index)] in generation order: real, fake, real, fake, ..."""
    extension = CODECS[codec][1]
    files = []
    for index in range(count):
        person_index, label = divmod(index, 2)
        person = f"p{person_index:04d}"
        files.append((f"{LABELS[label]}/{person}/c0{extension}", LABELS[label], person, person_index))
    return files


def _prepare_out_dir(out_dir, params, files):
    """Refuse a folder that is not ours; drop files of an earlier synth run that this run will not write.

    Then write a provisional synth.json (complete: false) first, so a crashed run still marks the
    folder as a synth dataset and lists what it was writing.
    """
    metadata_path = os.path.join(out_dir, METADATA_NAME)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise DfdError(f"{out_dir}: not a directory")
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        if not os.path.isfile(metadata_path):
            raise DfdError(
                f"{out_dir}: not empty and has no {METADATA_NAME}; refusing to write a synthetic dataset into it"
            )
        try:
            previous = read_json(metadata_path)
            previous_files = [name for name in previous.get("files", {}) if isinstance(name, str)]
        except (ValueError, AttributeError) as error:
            raise DfdError(f"{metadata_path}: not a synth metadata file ({error})") from None
        keep = {relative for relative, *_ in files}
        for relative in previous_files:
            parts = relative.split("/")
            # Only videos this generator writes (LABEL/PERSON/NAME), never anything outside the folder.
            if relative in keep or len(parts) != 3 or parts[0] not in LABELS or ".." in parts:
                continue
            path = os.path.join(out_dir, *parts)
            if os.path.isfile(path):
                os.unlink(path)
                try:
                    os.rmdir(os.path.dirname(path))  # the person folder, if now empty
                except OSError:
                    pass
    # Temp files a killed run left behind (encode_video's ".NAME.PID.tmp").
    for relative, *_ in files:
        folder, name = os.path.split(os.path.join(out_dir, *relative.split("/")))
        for leftover in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.tmp")):
            os.unlink(leftover)
    provisional = {
        "format": SYNTH_FORMAT,
        "version": SYNTH_VERSION,
        "complete": False,
        "params": params,
        "files": {relative: {"label": label, "person": person} for relative, label, person, _ in files},
    }
    write_json(metadata_path, provisional)


def synthesize(
    out_dir, count=40, frames=24, width=128, height=128, fps=12, codec="h264", seed=0, gop=12, progress=True
):
    """Generate the synthetic dataset into `out_dir` and return a summary dict.

    persons = ceil(count / 2); person i has real/p{i:04d}/c0.* and (while count allows) fake/p{i:04d}/c0.*.
    """
    _check_parameters(count, frames, width, height, fps, codec, gop)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise DfdError(f"seed: must be a non-negative integer (got {seed!r})")
    started = time.perf_counter()
    out_dir = os.fspath(out_dir)
    params = {
        "count": count, "frames": frames, "width": width, "height": height,
        "fps": fps, "codec": codec, "seed": seed, "gop": gop,
    }
    files = planned_files(count, codec)
    _prepare_out_dir(out_dir, params, files)

    metadata_files = {}
    counts = {label: 0 for label in LABELS}
    total_bytes = 0
    bar = tqdm(files, desc="synth", unit="video", file=sys.stderr, disable=not progress)
    for relative, label, person_name, person_index in bar:
        # Independent streams per person and per clip, so a clip does not depend on count or order.
        person = make_person(np.random.default_rng([seed, person_index, 0]))
        clip_rng = np.random.default_rng([seed, person_index, 1 + LABELS.index(label)])
        plan = make_clip_plan(clip_rng, frames, person, fake=(label == "fake"))
        boxes, inner_faces = [], []

        def frames_with_boxes():
            for pixels, box, inner_face in render_clip(person, plan, frames, width, height, clip_rng):
                boxes.append(box)
                inner_faces.append(inner_face)
                yield pixels

        path = os.path.join(out_dir, *relative.split("/"))
        encode_video(path, frames_with_boxes(), codec, width, height, fps, gop)
        size = os.path.getsize(path)
        total_bytes += size
        counts[label] += 1
        metadata_files[relative] = {
            "label": label,
            "person": person_name,
            "frames": frames,
            "fps": fps,
            "width": width,
            "height": height,
            "codec": codec,
            "bytes": size,
            "boxes": boxes,
            "inner_faces": inner_faces,
        }

    write_json(
        os.path.join(out_dir, METADATA_NAME),
        {
            "format": SYNTH_FORMAT,
            "version": SYNTH_VERSION,
            "complete": True,
            "params": params,
            "box_format": "boxes: [x1, y1, x2, y2] per frame, face ellipse bounds in pixels, x2 and y2 exclusive",
            "inner_face_format": (
                "inner_faces: [cx, cy, rx, ry] per frame, the ellipse a fake swaps (the same region in a real"
                " clip), in continuous pixel coordinates (pixel column j spans [j, j+1))"
            ),
            "files": metadata_files,
        },
    )
    return {
        "out_dir": out_dir,
        "videos": len(files),
        "persons": math.ceil(count / 2),
        "counts": counts,
        "total_bytes": total_bytes,
        "seconds": round(time.perf_counter() - started, 3),
        "params": params,
    }
