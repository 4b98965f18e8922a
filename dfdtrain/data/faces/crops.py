"""Face crops from the boxes stored at shard time, or a centre square when a video has none.

Boxes were detected on a few sampled frames (``meta["faces"]``); for the frames a loader samples they are
linearly interpolated (held at the ends). The crop region is the box grown by ``margin`` of its size on
every side (the DFDC winner used about 1/3), then made square around its centre; the crop is resized
isotropically to ``size`` and padded, so faces keep their aspect ratio. Regions outside the frame are
padded with zeros. Works on uint8 torch tensors on the CPU or the GPU.
A face-clip sample (``store: "faces"``) was cropped at shard time: its whole frame is the region, whatever the mode.
"""

import numpy as np
import torch
import torch.nn.functional as F

from dfdtrain.config import ClipSpec, choices

CROP_MODES = choices(ClipSpec, "crop")


def primary_face_track(faces):
    """(frame indices, boxes [n,4]) of the first (largest, surest) face on every frame that has one."""
    if not faces:
        return np.zeros(0), np.zeros((0, 4))
    found = [(frame, boxes[0][:4]) for frame, boxes in zip(faces["frames"], faces["boxes"]) if boxes]
    if not found:
        return np.zeros(0), np.zeros((0, 4))
    frames, boxes = zip(*found)
    return np.asarray(frames, dtype=float), np.asarray(boxes, dtype=float)


def boxes_for_frames(faces, indices):
    """One [x1, y1, x2, y2] per sampled frame index, interpolated from the stored boxes; None if no face."""
    frames, boxes = primary_face_track(faces)
    if len(frames) == 0:
        return None
    positions = np.asarray(indices, dtype=float)
    return np.stack([np.interp(positions, frames, boxes[:, column]) for column in range(4)], axis=1)


def square_regions(boxes, margin):
    """Grow boxes [n,4] by ``margin`` x their size per side and make them square around their centre."""
    boxes = np.asarray(boxes, dtype=float)
    centre_x = (boxes[:, 0] + boxes[:, 2]) / 2
    centre_y = (boxes[:, 1] + boxes[:, 3]) / 2
    side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * (1 + 2 * margin)
    return np.stack([centre_x - side / 2, centre_y - side / 2, centre_x + side / 2, centre_y + side / 2], axis=1)


def centre_square(width, height, count):
    side = min(width, height)
    box = [(width - side) / 2, (height - side) / 2, (width + side) / 2, (height + side) / 2]
    return np.tile(np.asarray(box, dtype=float), (count, 1))


def crop_regions(meta, indices, width, height, mode="face", margin=1 / 3):
    """The region [n,4] to crop on each sampled frame, and whether it came from face boxes."""
    if mode not in CROP_MODES:
        raise ValueError(f"crop mode must be one of {', '.join(CROP_MODES)}, not {mode!r}")
    if meta.get("store") == "faces":
        # a face-clip sample (``shard --store faces``) is already the square face crop: take the whole frame
        return np.tile(np.asarray([0, 0, width, height], dtype=float), (len(indices), 1)), not meta.get("no_face")
    if mode == "full":
        return np.tile(np.asarray([0, 0, width, height], dtype=float), (len(indices), 1)), False
    boxes = boxes_for_frames(meta.get("faces"), indices) if mode == "face" else None
    if boxes is None:
        return centre_square(width, height, len(indices)), False
    return square_regions(boxes, margin), True


def crop_and_resize(frames, regions, size, stretch=False):
    """Crop each frame [T,H,W,3] uint8 to its region, resize isotropically to ``size`` and zero-pad.

    Returns uint8 [T,size,size,3] on the frames' device. Parts of a region outside the frame are zeros.
    ``stretch=True`` resizes the region to exactly size x size instead: for frames that were already
    resized anisotropically (a DALI batch at a fixed canvas), which undoes that distortion. Frames that share
    a region (every frame of a face clip) are resized in one call.
    """
    count, height, width = frames.shape[:3]
    out = torch.zeros((count, size, size, 3), dtype=torch.uint8, device=frames.device)
    groups = {}
    for position, (x1, y1, x2, y2) in enumerate(np.asarray(regions, dtype=float)):
        x1, y1 = int(np.floor(x1)), int(np.floor(y1))
        x2, y2 = max(int(np.ceil(x2)), x1 + 1), max(int(np.ceil(y2)), y1 + 1)
        groups.setdefault((x1, y1, x2, y2), []).append(position)
    for (x1, y1, x2, y2), positions in groups.items():
        region_w, region_h = x2 - x1, y2 - y1
        scale = size / max(region_w, region_h)
        out_w, out_h = (size, size) if stretch else (max(1, round(region_w * scale)), max(1, round(region_h * scale)))
        # the visible part of the region, and where it lands inside the region
        left, top, right, bottom = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
        if right <= left or bottom <= top:
            continue
        index = torch.as_tensor(positions, device=frames.device)
        region = torch.zeros((len(positions), region_h, region_w, 3), dtype=torch.uint8, device=frames.device)
        region[:, top - y1:bottom - y1, left - x1:right - x1] = frames[index, top:bottom, left:right]
        pad_y, pad_x = (size - out_h) // 2, (size - out_w) // 2
        out[index, pad_y:pad_y + out_h, pad_x:pad_x + out_w] = _resize(region, out_h, out_w)
    return out


def _resize(images, height, width):
    """uint8 [N,H,W,3] -> uint8 [N,height,width,3], bilinear with antialiasing. On the CPU torch resizes uint8
    channels-last images itself (its SIMD path: ~7x faster than in float, equal to rounding); on a GPU in float."""
    channels_last = images.permute(0, 3, 1, 2)  # NCHW view of NHWC memory
    if images.device.type == "cpu":
        resized = F.interpolate(channels_last, size=(height, width), mode="bilinear", antialias=True,
                                align_corners=False)
    else:
        resized = F.interpolate(channels_last.float(), size=(height, width), mode="bilinear", antialias=True,
                                align_corners=False).round().clamp(0, 255).byte()
    return resized.permute(0, 2, 3, 1)
