"""Contact sheets: the sampled frames of one video with its face boxes and the crops the loader would make.

What a user looks at to trust the pipeline: the same clip contract (sampler, decoder, crop) as training.
Green = the detected face box, yellow = the crop region (box + margin, squared); under each frame, the crop.

``preview_doubtful(folder, out)``: one sheet of a face-clip store's doubtful videos (index.json
``doubtful_faces``), a row each: frames spread over the source video with the kept track's window (yellow) and
the dropped tracks' surest boxes (red, with their reason), and under each frame the crop the store kept.

``preview_synthesis(shard, out, "sbi"|"vb")``: the training loader's synthesis (``dfdtrain.data.loading.synthetic``)
on a few face-clip samples, three rows each: the real clip with its landmarks, the blend mask, the fake.
"""

import io
import json
import os
import re
from pathlib import Path

import numpy as np

from PIL import Image, ImageDraw

from dfdtrain.config import ClipSpec, SamplerConfig
from dfdtrain.data.loading.clips import clip_from_frames, read_sampled_frames, track_meta, video_member
from dfdtrain.data.faces.crops import boxes_for_frames
from dfdtrain.data.decode.decoders import build_decoder
from dfdtrain.data.decode.sampler import uniform_indices
from dfdtrain.data.decode.video import probe
from dfdtrain.core.errors import BadVideo, DfdError
from dfdtrain.core.fileio import atomic_open

TILE_HEIGHT = 220
CROP_SIZE = 128
# KEY.trackN: a face-clip sample's N-th track, as its tar member is named (a key itself has no dot)
TRACK_KEY = re.compile(r"^(?P<key>[^.]+)\.track(?P<track>\d+)$")


def load_from_shard(shard_path, key=None, track=None):
    """(video bytes, meta, member name) of sample ``key`` (default: the first) in a shard tar; for a face-clip
    sample, its track ``track`` (default 0; ``key`` may also say it, ``KEY.track1``), with the meta describing
    that track."""
    from dfdtrain.data.loading.stages import ReadTars

    match = TRACK_KEY.match(key) if key else None
    if match:
        if track is not None and track != int(match["track"]):
            raise DfdError(f"--key {key} names track {match['track']} and --track {track} another")
        key, track = match["key"], int(match["track"])
    sample = None
    for item in ReadTars.read(os.fspath(shard_path)):
        if "error" in item:  # the storage failed for good (no such bucket, a server down)
            raise DfdError(item["error"]["cause"])
        if "skip" in item:  # the tar broke before a whole sample was found
            raise DfdError(f"{shard_path}: {item['skip']['detail']}"
                           + (f" (no whole sample {key!r} before it)" if key else ""))
        if key is None or item["__key__"] == key:
            sample = item
            if "json" in sample and len(sample) >= 4:  # __key__, __url__, json and a video
                break
    if sample is None:
        raise DfdError(f"{shard_path}: no sample with key {key!r}" if key else f"{shard_path}: no sample")
    if "json" not in sample or len(sample) < 4:
        raise DfdError(f"{shard_path}: sample {sample['__key__']} lacks its json or its video member")
    key = sample["__key__"]
    try:
        sample["meta"] = json.loads(sample["json"])
    except ValueError as error:
        raise DfdError(f"{shard_path}: sample {key}: its json member is not JSON ({error})") from None
    meta = sample["meta"]
    if meta.get("store") != "faces":
        if track:
            raise DfdError(f"{shard_path}: sample {key} is not a face-clip sample: it has no track {track}")
        meta, field = video_member(sample)
        return sample[field], meta, f"{key}.{field}"
    tracks = meta.get("tracks") or []
    track = track or 0
    if not 0 <= track < len(tracks):
        raise DfdError(f"{shard_path}: sample {key} has {len(tracks)} face track(s) (0-{len(tracks) - 1}), "
                       f"no track {track}")
    meta = track_meta(meta, track)
    field = meta["track"]["member"]
    if field not in sample:
        raise DfdError(f"{shard_path}: sample {key} lacks its track {track} member {field}")
    return sample[field], meta, f"{key}.{field}"


def make_contact_sheet(source, meta, num_frames=16, margin=1 / 3, crop="face", decoder="pyav", name=None):
    """A PIL image of ``num_frames`` sampled frames with boxes, crop regions and the crops the loader makes.

    The crops come from the clip contract (``dfdtrain.data.loading.clips``) with the evaluation sampler, drawn at
    ``CROP_SIZE`` pixels: the regions and crops a detector trained with this crop and margin would see.
    """
    spec = ClipSpec(sampler=SamplerConfig("uniform", num_frames), crop=crop, margin=margin, image_size=CROP_SIZE)
    frames, indices, meta = read_sampled_frames(build_decoder(decoder), source, meta, spec.sampler, name=name)
    clip = clip_from_frames(frames, indices, meta, spec)
    frames, regions, frame_count = frames.numpy(), clip.regions, meta["frames"]
    height, width = frames.shape[1:3]
    crops = clip.frames[:len(indices)].numpy()
    from_faces = clip.face_crop
    boxes = boxes_for_frames(meta.get("faces"), indices)
    detected = set(meta.get("faces", {}).get("frames", [])) if meta.get("faces") else set()

    scale = TILE_HEIGHT / height
    tile_width = max(CROP_SIZE, round(width * scale))
    columns = min(len(indices), 4 if width <= height else 3)
    rows = -(-len(indices) // columns)
    header = 40
    cell_height = TILE_HEIGHT + CROP_SIZE + 26
    sheet = Image.new("RGB", (columns * (tile_width + 8) + 8, header + rows * cell_height), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    if from_faces and meta.get("store") == "faces":
        faces_note = "face clip (the whole frame)"
    elif from_faces:  # the boxes' source: a detector's name, or "file" (index --face-boxes)
        source = (meta.get("faces") or {}).get("detector")
        faces_note = "face boxes from the face-box file" if source == "file" else f"face boxes from {source or 'shard'}"
    else:
        faces_note = "full frame" if crop == "full" else "no face boxes: centre-square crop"
    track = f" track {meta['track_id']}" if "track_id" in meta else ""
    draw.text((8, 6), f"{meta.get('key', name)}{track}  label={meta.get('label', '?')}  {width}x{height}  "
                      f"{frame_count} frames @ {meta.get('fps', '?')} fps  {meta.get('codec', '')}", fill=(230, 230, 230))
    draw.text((8, 22), f"{len(indices)} sampled frames; {faces_note}; green = face, yellow = crop region, "
                       "* = boxed on this frame",
              fill=(180, 180, 180))
    for position, index in enumerate(indices):
        x0 = 8 + (position % columns) * (tile_width + 8)
        y0 = header + (position // columns) * cell_height
        tile = Image.fromarray(frames[position]).resize((round(width * scale), TILE_HEIGHT), Image.BILINEAR)
        sheet.paste(tile, (x0, y0))
        if boxes is not None:
            x1, y1, x2, y2 = (boxes[position] * scale).tolist()
            draw.rectangle([x0 + x1, y0 + y1, x0 + x2, y0 + y2], outline=(0, 255, 0), width=2)
        rx1, ry1, rx2, ry2 = (regions[position] * scale).tolist()
        draw.rectangle([x0 + rx1, y0 + ry1, x0 + rx2, y0 + ry2], outline=(255, 220, 0), width=1)
        sheet.paste(Image.fromarray(crops[position]), (x0, y0 + TILE_HEIGHT + 4))
        label = f"frame {int(index)}" + (" *" if int(index) in detected else "")
        draw.rectangle([x0, y0, x0 + 6 * len(label) + 6, y0 + 14], fill=(0, 0, 0))
        draw.text((x0 + 3, y0 + 1), label, fill=(240, 240, 240))
    return sheet


def preview(path, out, num_frames=16, key=None, faces="none", margin=1 / 3, crop="face", decoder="pyav",
            track=None):
    """Write a contact sheet PNG for a video file or one sample of a shard (``track``: a face-clip sample's
    track, default 0); returns what was drawn."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise DfdError(f"{path}: a directory; give a video file or a shard .tar (with --key for a sample in it)")
    if track is not None and track < 0:
        raise DfdError(f"--track {track}: a track number is 0 or more")
    if path.endswith(".tar"):
        data, meta, name = load_from_shard(path, key, track)
    elif track:
        raise DfdError(f"{path}: --track {track} needs a face-clip shard sample, not a video file")
    else:
        from dfdtrain.data import storage

        data = storage.read_bytes(path) if storage.is_url(path) else Path(path).read_bytes()
        if data is None:
            raise DfdError(f"{storage.redact(path)}: not found")
        name = path
        meta = {"key": os.path.basename(path), **probe(data, name=path)}
    if faces != "none" and "faces" not in meta and meta.get("store") != "faces":
        from dfdtrain.data.faces.detect import build_face_detector, detect_faces

        meta["faces"] = detect_faces(data, num_frames, build_face_detector(faces), meta["frames"])
    sheet = make_contact_sheet(data, meta, num_frames, margin, crop, decoder, name=name)
    save_png(sheet, out)
    faces_meta = meta.get("faces") or {}
    return {"source": path, "key": meta.get("key"), "track": meta.get("track_id"), "out": os.fspath(out),
            "frames": meta["frames"], "sampled": num_frames,
            "face_frames": len([b for b in faces_meta.get("boxes", []) if b])}


def save_png(image, out):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    with atomic_open(out, "wb") as handle:
        handle.write(buffer.getvalue())


# ---------------------------------------------------------------------------------------- doubtful faces
DOUBTFUL_ROWS_PER_SHEET = 24  # rows (videos) per PNG: a larger store's doubtful videos go on more sheets
DOUBTFUL_TILE_HEIGHT = 120
DOUBTFUL_CROP = 56


def doubtful_samples(folder):
    """[(doubtful entry, its sample)] of a face-clip shard folder (local or remote), in index.json's order; each
    doubtful video's shard is read once."""
    from dfdtrain.data import storage
    from dfdtrain.data.loading.stages import ReadTars

    folder = os.fspath(folder).rstrip("/")
    index_path = storage.join(folder, "index.json")
    try:
        data = storage.read_bytes(index_path)
    except OSError as error:
        raise DfdError(f"{index_path}: {error.strerror or error}") from None
    if data is None:
        raise DfdError(f"{storage.redact(index_path)}: not found (give the shard folder of 'dfdtrain shard --out')")
    try:
        index = json.loads(data)
        doubtful = index.get("doubtful_faces")
        if not isinstance(doubtful, list):
            raise DfdError(f"{storage.redact(index_path)}: no doubtful_faces list: not a face-clip store "
                           "(shard --store faces) of this version")
        wanted = {str(item["key"]): item for item in doubtful}
        by_shard = {}  # only names of files in the folder itself
        for shard in index["shards"]:
            for key in shard.get("keys", []):
                if key in wanted and os.path.basename(str(shard["name"])) == shard["name"]:
                    by_shard.setdefault(shard["name"], set()).add(key)
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        why = f"{type(error).__name__}: {error}"
        raise DfdError(f"{storage.redact(index_path)}: not a shard index.json ({why})") from None
    found = {}
    for name, keys in by_shard.items():
        for sample in ReadTars.read(storage.join(folder, name)):
            if "error" in sample:
                raise DfdError(sample["error"]["cause"])
            if sample.get("__key__") in keys and "json" in sample:
                found[sample["__key__"]] = sample
    missing = [key for key in wanted if key not in found]
    if missing:
        raise DfdError(f"{storage.redact(folder)}: doubtful video(s) {', '.join(missing[:5])} not found in their shards")
    return [(wanted[key], found[key]) for key in wanted]


def doubtful_row(entry, sample, num_frames):
    """One video's row of the doubtful sheet, as a PIL image; a sample json that is not a face-clip sample's is one
    line naming the video."""
    try:
        return _doubtful_row(entry, sample, num_frames)
    except (ValueError, KeyError, TypeError, IndexError) as error:
        raise DfdError(f"{entry.get('key')}: not a face-clip sample ({type(error).__name__}: {error})") from None


def _doubtful_row(entry, sample, num_frames):
    meta = json.loads(sample["json"])
    track = meta["tracks"][0]
    source_path = os.path.join(meta.get("root", ""), meta.get("path", ""))
    frame_count = meta["source"]["frames"]
    indices = uniform_indices(frame_count, num_frames)
    decoder = build_decoder("pyav")
    try:
        frames = decoder.read(Path(source_path).read_bytes(), indices, name=source_path)
        note = ""
    except (OSError, BadVideo) as error:  # the source moved or broke since: show what the store kept
        why = getattr(error, "strerror", None) or error
        frames, note = None, f"source not readable here ({why}); stored crops only"
    in_track = {frame: position for position, frame in enumerate(track["source_frames"])}
    positions = [in_track.get(index) for index in indices]
    kept = [position for position in positions if position is not None]
    crops = dict(zip(kept, decoder.read(sample[track["member"]], kept, name=f"{entry['key']}.{track['member']}"))) \
        if kept else {}
    source_width, source_height = meta["source"]["width"], meta["source"]["height"]
    scale = DOUBTFUL_TILE_HEIGHT / source_height
    tile_width = round(source_width * scale)
    header = 30
    row = Image.new("RGB", (8 + num_frames * (tile_width + 6), header + DOUBTFUL_TILE_HEIGHT + DOUBTFUL_CROP + 10),
                    (24, 24, 24))
    draw = ImageDraw.Draw(row)
    quality = track.get("quality") or {}
    dropped = ", ".join(f"{reason} {count}" for reason, count in meta.get("dropped_track_reasons", {}).items())
    draw.text((8, 2), f"{entry['key']}  label={meta.get('label', '?')}  {source_path}", fill=(230, 230, 230))
    draw.text((8, 15), f"doubtful: {entry['reason']}; kept track: frames {track['source_frames'][0]}-"
                       f"{track['source_frames'][-1]}, coverage {quality.get('coverage', 0):.0%}, "
                       f"score {track['score']}; dropped tracks: {dropped or 'none'}"
                       + (f"; {note}" if note else ""), fill=(255, 170, 120))
    for number, (index, position) in enumerate(zip(indices, positions)):
        x0, y0 = 8 + number * (tile_width + 6), header
        if frames is not None:
            tile = Image.fromarray(frames[number]).resize((tile_width, DOUBTFUL_TILE_HEIGHT), Image.BILINEAR)
            row.paste(tile, (x0, y0))
        if position is not None:
            x1, y1, x2, y2 = (value * scale for value in track["windows"][position])
            draw.rectangle([x0 + x1, y0 + y1, x0 + x2, y0 + y2], outline=(255, 220, 0), width=2)
            crop = Image.fromarray(crops[position]).resize((DOUBTFUL_CROP, DOUBTFUL_CROP), Image.BILINEAR)
            row.paste(crop, (x0, y0 + DOUBTFUL_TILE_HEIGHT + 4))
        for dropped in meta.get("dropped_tracks", []):
            if dropped["frames"][0] <= index <= dropped["frames"][1]:
                x1, y1, x2, y2 = (value * scale for value in dropped["surest"][1:5])
                draw.rectangle([x0 + x1, y0 + y1, x0 + x2, y0 + y2], outline=(255, 60, 60), width=2)
                draw.text((x0 + x1 + 2, y0 + y1 + 2), dropped["reason"], fill=(255, 60, 60))
        draw.text((x0 + 2, y0 + 1), f"{index}", fill=(240, 240, 240))
    return row


def preview_doubtful(folder, out, num_frames=8):
    """Contact sheets of the doubtful videos of a face-clip shard folder (``index.json``'s ``doubtful_faces``):
    ``out`` and, past DOUBTFUL_ROWS_PER_SHEET videos, ``out`` with -2, -3... before .png. Returns what was drawn."""
    chosen = doubtful_samples(folder)
    if not chosen:
        return {"source": os.fspath(folder), "doubtful": 0, "sheets": []}
    stem = os.fspath(out)[:-len(".png")] if os.fspath(out).lower().endswith(".png") else os.fspath(out)
    sheets = []
    for start in range(0, len(chosen), DOUBTFUL_ROWS_PER_SHEET):
        rows = [doubtful_row(entry, sample, num_frames)
                for entry, sample in chosen[start:start + DOUBTFUL_ROWS_PER_SHEET]]
        size = (max(row.width for row in rows), sum(row.height + 4 for row in rows) + 24)
        sheet = Image.new("RGB", size, (12, 12, 12))
        ImageDraw.Draw(sheet).text((8, 6), f"{len(chosen)} doubtful video(s) of {os.fspath(folder)} "
                                           f"(yellow: the kept track's window; red: dropped tracks, with why)",
                                   fill=(230, 230, 230))
        top = 24
        for row in rows:
            sheet.paste(row, (0, top))
            top += row.height + 4
        path = os.fspath(out) if not sheets else f"{stem}-{len(sheets) + 1}.png"
        save_png(sheet, path)
        sheets.append(path)
    return {"source": os.fspath(folder), "doubtful": len(chosen), "sheets": sheets,
            "keys": [entry["key"] for entry, _ in chosen]}


# ---------------------------------------------------------------------------------------- synthesis
SYNTHESIS_TILE = 128


def grid_sheet(title, rows, tile=SYNTHESIS_TILE):
    """The sheet layout: a title line, then rows of (label, [uint8 images]) tiles, each row's label on its left."""
    label_width, columns = 160, max(len(images) for _, images in rows)
    sheet = Image.new("RGB", (label_width + columns * (tile + 4) + 4, 24 + len(rows) * (tile + 4)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    draw.text((8, 6), title, fill=(230, 230, 230))
    for number, (label, images) in enumerate(rows):
        y0 = 24 + number * (tile + 4)
        draw.text((8, y0 + tile // 2 - 6), label, fill=(210, 210, 210))
        for column, image in enumerate(images):
            picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
            sheet.paste(picture.resize((tile, tile), Image.BILINEAR), (label_width + column * (tile + 4), y0))
    return sheet


def synthesis_rows(sample, name, num_frames, seed=0, decoder="pyav"):
    """(real, mask, synthesised) rows of a face-clip sample's track 0: the training loader's synthesis with the
    evaluation sampler, seeded by (seed, key)."""
    from dfdtrain.data.loading.clips import make_clip
    from dfdtrain.data.loading.synthesis import synthesis_rng
    from dfdtrain.data.faces.landmarks import track_points
    from dfdtrain.data.loading.synthetic import clip_landmarks, synthesise_clip

    meta, field = video_member(sample)
    spec = ClipSpec(sampler=SamplerConfig("uniform", num_frames), crop="face", image_size=SYNTHESIS_TILE)
    clip = make_clip(build_decoder(decoder), sample[field], meta, spec, name=f"{sample['__key__']}.{field}")
    result = synthesise_clip(name, sample, clip, synthesis_rng(seed, 0, 0, sample["__key__"]))
    count = len(clip.indices)
    landmarks = clip_landmarks(track_points(sample, clip.meta["track"]), clip, SYNTHESIS_TILE, num_frames)
    reals = []
    for position in range(count):
        image = Image.fromarray(clip.frames[position].numpy())
        draw = ImageDraw.Draw(image)
        for x, y in landmarks[position][np.isfinite(landmarks[position]).all(axis=1)]:
            draw.point((float(x), float(y)), fill=(0, 255, 0))
        reals.append(image)
    masks = [np.repeat((np.asarray(mask) * 255).round().astype(np.uint8)[..., None], 3, axis=2)
             for mask in result.mask[:count]]
    fakes = [np.asarray(frame) for frame in result.frames[:count]]
    left_real = int((~result.blended[:count]).sum())  # frames without landmarks
    return [(f"{sample['__key__']}\nreal", reals), ("mask", masks),
            (name + (f"\n({left_real} left real)" if left_real else ""), fakes)]


def preview_synthesis(shard_path, out, name, num_frames=8, samples=3, key=None, seed=0):
    """Write a sheet of ``samples`` face-clip samples of a shard (or sample ``key``) made fake by synthesis
    ``name``: rows real (landmarks in green) / blend mask / synthesised. A shard without landmarks: one line."""
    from dfdtrain.data.faces.landmarks import landmarks_available, missing_landmarks_line
    from dfdtrain.data.loading.stages import ReadTars
    from dfdtrain.data.shards.catalog import folder_indexes

    shard_path = os.fspath(shard_path)
    for folder, index in folder_indexes([shard_path]).items():
        if index is not None and not landmarks_available(index):
            raise DfdError(missing_landmarks_line(folder, need=f"synthesis {name}"))
    rows, keys = [], []
    for sample in ReadTars.read(shard_path):
        if "error" in sample:
            raise DfdError(sample["error"]["cause"])
        if "skip" in sample:
            raise DfdError(f"{shard_path}: {sample['skip']['detail']}")
        if key is not None and sample["__key__"] != key or "json" not in sample:
            continue
        sample["meta"] = json.loads(sample["json"])
        if sample["meta"].get("store") != "faces":
            raise DfdError(f"{shard_path}: sample {sample['__key__']} is not a face-clip sample: the synthesis "
                           "needs face clips with landmarks ('dfdtrain shard --store faces --landmarks dlib68')")
        rows += synthesis_rows(sample, name, num_frames, seed)
        keys.append(sample["__key__"])
        if len(keys) == samples:
            break
    if not keys:
        raise DfdError(f"{shard_path}: no sample with key {key!r}" if key else f"{shard_path}: no sample")
    save_png(grid_sheet(f"{name} on {os.path.basename(shard_path)}: real (landmarks green) / mask / {name}", rows),
             out)
    return {"source": shard_path, "out": os.fspath(out), "synthesis": name, "samples": keys, "frames": num_frames}
