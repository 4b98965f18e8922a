"""The clip contract: one video (+ its stored faces or face track) -> the clip a model sees.

Every path that feeds a model goes through here, so a video reaches a detector the same way in training,
validation, ``evaluate``, ``embed``, ``predict``, ``preview`` and on the DALI path::

    clip = make_clip(decoder, source, meta, spec, rng=None)   # sample -> decode -> crop -> resize -> pad
    inputs = model_input(torch.stack([clip.frames, ...]), spec)  # (ELA) -> (augment) -> normalise

``spec`` is a resolved ``ClipSpec`` (dfdtrain.config: sampler, crop mode and margin, input size, mean/std,
input transform). ``meta`` is what is known of the video: at least ``frames`` (its frame count); ``faces``
(boxes on some frames, stored at shard time or found now by a face detector) for face crops; for a face-clip
shard sample (``store: faces``) the ``track`` the clip holds (the clip is the face crop already: the whole
frame is the region). ``rng`` (a numpy Generator) jitters the sampler in training; None samples
deterministically (evaluation, predict). A video that cannot be used raises ``BadVideo``.
"""

import dataclasses

import numpy as np
import torch

from dfdtrain.data.loading.augment import augment_clips, ela
from dfdtrain.data.faces.crops import crop_and_resize, crop_regions
from dfdtrain.data.decode.sampler import sample_indices
from dfdtrain.data.faces.tracks import best_track_boxes
from dfdtrain.data.decode.video import IMAGE_EXTENSIONS, probe
from dfdtrain.core.errors import BadVideo, DfdError

# Members of a shard sample that are not its video.
NOT_VIDEO_FIELDS = ("__key__", "__url__", "__local_path__", "json", "meta")
# Meta fields a batch does not carry on: used up by the crop, and bulky.
BULKY_META_FIELDS = ("faces", "tracks", "track")


class NoFaceFound(DfdError):
    """Face crops were asked for, the video has no stored boxes, and the detector found no face."""


@dataclasses.dataclass
class Clip:
    frames: torch.Tensor  # uint8 [T,S,S,3]: the crops, zeros at padded positions (T = spec.sampler.num_frames)
    mask: torch.Tensor  # bool [T]: True at the real frames (the first n)
    indices: np.ndarray  # int64 [n]: the frames decoded, in the decoded video's time (clip time for face clips)
    regions: np.ndarray  # float [n,4]: the crop region of each frame, in the decoded frames' pixels
    face_crop: bool  # the regions came from faces (boxes or a face track), not a centre or full-frame crop
    meta: dict  # the meta as used: a recounted frame count, detected faces


# ---------------------------------------------------------------------------------------------- which video
def track_meta(meta, track_number):
    """A face-clip sample's meta seen as one of its tracks: the track, its id and its frame count."""
    track = meta["tracks"][track_number]
    # each track is stored at its own size (shards before that: every track at the sample's width/height)
    size = {"width": track["size"], "height": track["size"]} if "size" in track else {}
    return {**meta, "frames": track["frames"], "track_id": track["id"], "track": track, **size}


def video_member(sample, face_track="best", rng=None):
    """(meta, field) of the video to decode in a shard sample (its ``meta`` already parsed).

    A face-clip sample holds one clip per face track, best first: track 0, or with ``face_track="random"`` and an
    ``rng`` (training) any track; the meta then describes that track, so the sampler works in clip time.
    """
    meta, key = sample["meta"], sample["__key__"]
    if meta.get("store") == "faces":
        choice = int(rng.integers(len(meta["tracks"]))) if face_track == "random" and rng is not None else 0
        meta = track_meta(meta, choice)
        if meta["track"]["member"] not in sample:
            raise BadVideo(key, "unreadable", f"face-clip sample lacks its {meta['track']['member']} member")
        return meta, meta["track"]["member"]
    field = next((field for field in sample if field not in NOT_VIDEO_FIELDS), None)
    if field is None:
        raise BadVideo(key, "unreadable", "sample has no video member")
    return meta, field


# ---------------------------------------------------------------------------------------------- the clip
def read_sampled_frames(decoder, source, meta, sampler, rng=None, name=None):
    """(frames uint8 [n,H,W,3] tensor, indices int64 [n], meta): the sampler's frames of ``source``, decoded.

    A stored frame count that overstates the video (a lying header, a cut file) is counted again from the
    bytes and the clip sampled again, rather than losing a usable video. One that is implausibly small (0, 1, or
    fewer frames than the sampler takes from a long enough video) is counted before sampling, so a usable video is
    neither skipped as frameless nor scored from one frame. Either correction is recorded in the returned meta:
    ``frames`` the real count, ``frames_stored`` what the metadata said.
    """
    stored = meta["frames"]

    def recounted(meta):
        return {**meta, "frames": probe(source, name=name)["frames"], "frames_stored": stored}

    if stored < frames_needed(sampler) and not _is_image(name):
        counted = recounted(meta)
        meta = counted if counted["frames"] != stored else meta
    for attempt in ("stored count", "recounted"):
        indices, _ = sample_indices(meta["frames"], sampler, rng)
        if len(indices) == 0:
            raise BadVideo(name, "undecodable", "no frames")
        try:
            return torch.from_numpy(decoder.read(source, indices, name=name)), indices, meta
        except BadVideo as error:
            if error.reason != "truncated" or attempt == "recounted":
                raise
            meta = recounted(meta)


def frames_needed(sampler):
    """The frames a video must have for ``sampler`` to take all of its ``num_frames`` (the span of a strided
    clip); a stored count below this is re-counted before sampling."""
    if sampler.mode == "uniform":
        return sampler.num_frames
    step = sampler.stride if sampler.mode == "clip" else sampler.every
    return (sampler.num_frames - 1) * max(int(step or 1), 1) + 1


def _is_image(name):
    """A still image is one frame by nature: its count of 1 is not re-counted."""
    return str(name or "").lower().endswith(IMAGE_EXTENSIONS)


def clip_from_frames(frames, indices, meta, spec, source_size=None):
    """The Clip of decoded frames [n,H,W,3] (any device): crop each frame, resize to the input size, pad to T.

    ``source_size=(width, height)``: the frames were resized from a video of that size (DALI's decode-time
    canvas); regions are found in the source's pixels, scaled, and stretched back to a square.
    """
    height, width = frames.shape[1:3]
    source_width, source_height = source_size or (width, height)
    regions, face_crop = crop_regions(meta, indices, source_width, source_height, spec.crop, spec.margin)
    resized = (source_width, source_height) != (width, height)
    if resized:
        regions = regions * np.array([width / source_width, height / source_height] * 2)
    size, count = spec.image_size, len(indices)
    clip = torch.zeros((spec.sampler.num_frames, size, size, 3), dtype=torch.uint8, device=frames.device)
    clip[:count] = crop_and_resize(frames, regions, size, stretch=resized)
    mask = torch.arange(spec.sampler.num_frames) < count
    return Clip(clip, mask, np.asarray(indices), regions, face_crop, meta)


def detect_faces_on(frames, indices, face_detector, frame_count):
    """Stored-boxes form (``meta["faces"]``) of the faces ``face_detector`` finds on decoded frames of a video of
    ``frame_count`` frames: on each frame the face of its best track (``tracks.best_track_boxes``) or none."""
    boxes = best_track_boxes([int(index) for index in indices], face_detector.detect(frames.cpu().numpy()),
                             frame_count, (frames.shape[2], frames.shape[1]))
    if not any(boxes):
        raise NoFaceFound(f"no face found in {len(indices)} sampled frames")
    return {"detector": face_detector.name, "frames": [int(index) for index in indices], "boxes": boxes}


def make_clip(decoder, source, meta, spec, rng=None, name=None, face_detector=None, degrade_frames=None):
    """The Clip of one video (path or bytes) as ``spec`` says: sample, decode, crop, resize, pad.

    ``face_detector``: for a video without stored boxes (predict), detect faces on the sampled frames and
    crop around them (``spec.crop == "face"``); none found is ``NoFaceFound``. Stored boxes, or a face-clip
    sample, are used as they are. ``degrade_frames``: frames -> frames on the decoded frames before the face
    detector and the crop (a robustness perturbation: ``dfdtrain.data.loading.degrade``).
    """
    frames, indices, meta = read_sampled_frames(decoder, source, meta, spec.sampler, rng, name)
    if degrade_frames is not None:
        frames = degrade_frames(frames)
    stored = meta.get("faces") or meta.get("store") == "faces"
    if face_detector is not None and spec.crop == "face" and not stored:
        meta = {**meta, "faces": detect_faces_on(frames, indices, face_detector, meta["frames"])}
    return clip_from_frames(frames, indices, meta, spec)


def batch_meta(clip):
    """The meta a batch carries for a clip: what was sampled, without the bulky boxes and tracks."""
    meta = {key: value for key, value in clip.meta.items() if key not in BULKY_META_FIELDS}
    if "track" in clip.meta:  # a face clip: where the sampled frames came from in the source video
        meta["source_frame_indices"] = [clip.meta["track"]["source_frames"][index] for index in clip.indices]
    meta.update(frame_indices=clip.indices.tolist(), face_crop=clip.face_crop)
    return meta


# ---------------------------------------------------------------------------------------------- the input
def model_input(clips, spec, augment=None, generator=None):
    """uint8 clips [B,T,S,S,3] -> the model's float input [B,T,3,S,S], on the clips' device.

    The spec's input transform (ELA), training augmentation when ``augment`` (an AugmentConfig) and
    ``generator`` (numpy) are given, then normalisation with the spec's mean and std.
    """
    if not spec.resolved:
        raise DfdError("the clip spec leaves image_size or mean/std to the backbone: resolve it first "
                       "(ClipSpec.resolve(model.backbone_info['data_config']))")
    if spec.input_transform == "ela":
        clips = (ela(clips, spec.ela_quality, spec.ela_scale) * 255).round().byte()
    if augment is not None and generator is not None:
        batch = augment_clips(clips, augment, generator)
    else:
        batch = clips.permute(0, 1, 4, 2, 3).float() / 255.0
    mean = torch.as_tensor(spec.mean, dtype=torch.float32, device=batch.device).view(1, 1, 3, 1, 1)
    std = torch.as_tensor(spec.std, dtype=torch.float32, device=batch.device).view(1, 1, 3, 1, 1)
    return (batch - mean) / std
