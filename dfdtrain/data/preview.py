"""Contact sheets: the sampled frames of one video with its face boxes and the crops the loader would make.

What a user looks at to trust the pipeline: the same clip contract (sampler, decoder, crop) as training.
Green = the detected face box, yellow = the crop region (box + margin, squared); under each frame, the crop.
"""

import io
import json
import os
import re
from pathlib import Path

from PIL import Image, ImageDraw

from dfdtrain.config import ClipSpec, SamplerConfig
from dfdtrain.data.clips import clip_from_frames, read_sampled_frames, track_meta, video_member
from dfdtrain.data.crops import boxes_for_frames
from dfdtrain.data.decoders import build_decoder
from dfdtrain.data.video import probe
from dfdtrain.errors import DfdError

TILE_HEIGHT = 220
CROP_SIZE = 128
# KEY.trackN: a face-clip sample's N-th track, as its tar member is named (a key itself has no dot)
TRACK_KEY = re.compile(r"^(?P<key>[^.]+)\.track(?P<track>\d+)$")


def load_from_shard(shard_path, key=None, track=None):
    """(video bytes, meta, member name) of sample ``key`` (default: the first) in a shard tar; for a face-clip
    sample, its track ``track`` (default 0; ``key`` may also say it, ``KEY.track1``), with the meta describing
    that track."""
    from dfdtrain.data.loader import ReadTars

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

    The crops come from the clip contract (``dfdtrain.data.clips``) with the evaluation sampler, drawn at
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
    if from_faces:
        faces_note = "face clip (the whole frame)" if meta.get("store") == "faces" else "face boxes from shard/detector"
    else:
        faces_note = "full frame" if crop == "full" else "no face boxes: centre-square crop"
    track = f" track {meta['track_id']}" if "track_id" in meta else ""
    draw.text((8, 6), f"{meta.get('key', name)}{track}  label={meta.get('label', '?')}  {width}x{height}  "
                      f"{frame_count} frames @ {meta.get('fps', '?')} fps  {meta.get('codec', '')}", fill=(230, 230, 230))
    draw.text((8, 22), f"{len(indices)} sampled frames; {faces_note}; green = face, yellow = crop region, "
                       "* = detected on this frame",
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
            raise DfdError(f"{storage.mask(path)}: not found")
        name = path
        meta = {"key": os.path.basename(path), **probe(data, name=path)}
    if faces != "none" and "faces" not in meta and meta.get("store") != "faces":
        from dfdtrain.data.faces import build_face_detector, detect_faces

        meta["faces"] = detect_faces(data, num_frames, build_face_detector(faces), meta["frames"])
    sheet = make_contact_sheet(data, meta, num_frames, margin, crop, decoder, name=name)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG")
    from dfdtrain.fileio import atomic_open

    with atomic_open(out, "wb") as handle:
        handle.write(buffer.getvalue())
    faces_meta = meta.get("faces") or {}
    return {"source": path, "key": meta.get("key"), "track": meta.get("track_id"), "out": os.fspath(out),
            "frames": meta["frames"], "sampled": num_frames,
            "face_frames": len([b for b in faces_meta.get("boxes", []) if b])}
