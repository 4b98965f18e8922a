"""Predict REAL/FAKE for single videos with a trained detector (the ``dfdtrain predict`` command and Python API).

    predictor = Predictor("runs/exp1", faces="mtcnn")
    results = predictor.predict(["a.mp4", "b.mp4"])   # one dict per input, in input order

Each video becomes the clip training made of it, through the same clip contract (``dfdtrain.data.loading.clips``) and
the detector's own clip spec: its sampler (deterministic, evaluation mode), PyAV decoding, face crops grown by
the training margin (boxes detected on the sampled frames by MTCNN, interpolated over frames without a face)
or the training crop without boxes, the training input size, transform and normalisation, and a padding mask
for videos shorter than the clip. A bad file gives an error entry and never stops the others; so does anything
that is not a regular file (a FIFO, a device such as /dev/zero, a directory): it is refused unread, and a file
is read once, at most its size when opened.

``perturb="jpeg:3"`` (``predict --perturb``): each video degraded by one robustness perturbation as ``evaluate
--perturb`` degrades shard videos (``dfdtrain.data.loading.degrade.FixedPerturbation``, seeded by the file's stem):
h264 re-encodes the file's bytes before they are probed and decoded (so the face detector sees the compression),
the frame types change the decoded frames before face detection and the crop. Each result says which
(``perturbation``).
"""

import dataclasses
import functools
import math
import sys
import time
from pathlib import Path

import torch

from dfdtrain.metrics.calibration import sigmoid
from dfdtrain.data.loading.clips import make_clip, model_input
from dfdtrain.data.decode.decoders import build_decoder
from dfdtrain.data.decode.video import probe
from dfdtrain.data.faces.detect import build_face_detector
from dfdtrain.core.errors import BadVideo, DfdError, one_line
from dfdtrain.core.fileio import read_regular_file
from dfdtrain.models.bundle import load_detector
from dfdtrain.models.detector import detector_score_kind
from dfdtrain.models.explain import METHOD, NotExplainable, overlay, png_data_url, safe_key, write_overlays
from dfdtrain.models.explain import explain as explain_batch
from dfdtrain.inference.faces import DEFAULT_FACES, NO_FACES, face_modes

VIDEO_INFO = ("frames", "fps", "width", "height", "codec")


def _error_entry(path, message):
    return {"path": str(path), "error": one_line(message)}


def _bad_video_message(error):
    return error.reason + (f" ({error.detail})" if error.detail else "")


# the stages of a video's ``stage_seconds``: reading + probing + decoding the sampled frames, face detection,
# cropping/resizing/padding (the rest of making the clip), its share of the model batch, and all of them
STAGES = ("decode", "faces", "crop", "model", "total")


class _Timed:
    """``target`` as it is, except that calls of its method ``method`` add their seconds to ``seconds[stage]``:
    the decoder's reads and the face detector's passes timed inside the one clip contract (``make_clip``)."""

    def __init__(self, target, method, seconds, stage):
        self._target, self._method, self._seconds, self._stage = target, method, seconds, stage

    def __getattr__(self, name):
        attribute = getattr(self._target, name)
        if name != self._method:
            return attribute

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return attribute(*args, **kwargs)
            finally:
                self._seconds[self._stage] += time.perf_counter() - started

        return timed


class Predictor:
    """A loaded detector plus everything needed to turn video files into p_fake scores."""

    def __init__(self, checkpoint, device="cpu", faces=DEFAULT_FACES, num_frames=None, batch_size=4,
                 progress=True, base_weights=None, perturb=None):
        if faces not in face_modes():
            raise DfdError(f"faces must be one of {', '.join(face_modes())}, not {faces!r}")
        if num_frames is not None and num_frames < 1:
            raise DfdError("the number of frames must be at least 1")
        if batch_size < 1:
            raise DfdError("the batch size must be at least 1")
        self.perturbation, self.degrade = None, None  # a robustness perturbation of every video (perturb)
        if perturb:
            from dfdtrain.data.loading.degrade import FixedPerturbation
            from dfdtrain.evaluation.evaluate import perturbation_summary

            self.perturbation = perturbation_summary(perturb)  # a bad spec: one line, before the model loads
            self.degrade = FixedPerturbation(self.perturbation["spec"])
        self.device = torch.device(device)
        self.model, self.settings = load_detector(checkpoint, self.device, base_weights)  # see load_detector
        self.clip = self.settings.clip
        if num_frames:
            self.clip = dataclasses.replace(self.clip, sampler=dataclasses.replace(self.clip.sampler,
                                                                                   num_frames=num_frames))
        self.threshold = self.settings.threshold  # on the calibrated P(fake)
        self.calibration = self.settings.calibration
        # per-frame scores only where the head judges frames alone; a GRU/LSTM's are its steps ("step_scores")
        self.scores_key = f"{detector_score_kind(self.settings.model)}_scores"
        self.faces = faces
        self.batch_size = batch_size
        self.progress = progress
        self.decoder = build_decoder("pyav")
        self._face_detector = None  # built on first use: MTCNN takes a moment to load

    def face_detector(self):
        if self._face_detector is None:
            self._face_detector = build_face_detector(self.faces, device=str(self.device))
        return self._face_detector

    def prepare(self, source, meta=None, name=None, seconds=None, degrade_frames=None):
        """The Clip of one video (path or bytes) as the detector sees it.

        ``meta``: what is known of the video, e.g. a shard sample's json (stored face boxes, or a face-clip
        sample's track); by default its probe. Without stored boxes and with ``faces="mtcnn"``, faces are
        detected on the sampled frames. ``seconds``: a dict whose ``decode``, ``faces`` and ``crop`` entries get
        the seconds of each stage added (crop: the rest of making the clip). ``degrade_frames``: frames -> frames
        on the decoded frames before face detection and the crop (``make_clip``'s; a robustness perturbation).
        """
        started = time.perf_counter()
        seconds = seconds if seconds is not None else {}
        for stage in ("decode", "faces", "crop"):
            seconds.setdefault(stage, 0.0)
        timed_before = seconds["decode"] + seconds["faces"]
        name = name or (str(source) if not isinstance(source, (bytes, bytearray)) else "<bytes>")
        if meta is None:
            meta = probe(source, name=name)
            seconds["decode"] += time.perf_counter() - started
        detector = None
        if self.faces != NO_FACES and self.clip.crop == "face":
            loading = time.perf_counter()
            detector = _Timed(self.face_detector(), "detect", seconds, "faces")  # the first call loads MTCNN
            seconds["faces"] += time.perf_counter() - loading
        try:
            return make_clip(_Timed(self.decoder, "read", seconds, "decode"), source, meta, self.clip, name=name,
                             face_detector=detector, degrade_frames=degrade_frames)
        finally:
            timed = seconds["decode"] + seconds["faces"] - timed_before
            seconds["crop"] += max(time.perf_counter() - started - timed, 0.0)

    def predict(self, paths, crops=False, explain=False, explain_dir=None):
        """One dict per path, in input order: p_fake (calibrated by the detector's temperature; p_fake_raw
        before), verdict at the detector's threshold, the per-position scores (``frame_scores``, or
        ``step_scores`` / ``token_scores`` for heads whose positions are not judged alone: SCORE_KINDS) on the
        verdict's scale (``*_scores_raw`` before calibration; ``scales`` names each field's scale), frames used,
        faces found, ``seconds`` and ``stage_seconds`` (STAGES), ... or {"path", "error", "seconds"}.
        ``crops``: also the crops the model saw, as JPEG data URLs (``crops``).
        ``explain``: also a Grad-CAM map per frame of what drove the fake score, as PNG data URLs of the map
        over its crop (``explain.maps``, dfdtrain.models.explain); ``explain_dir``: written there as
        DIR/KEY-NNN.png per frame (NNN: its frame number in the video) and DIR/KEY-strip.png (``explain.files``,
        ``explain.strip``). Maps come from the scoring pass itself (same scores); a model without an explainer
        gets ``explain.note`` instead. With a perturbation (``perturb``) every entry, errors too, has
        ``perturbation`` (as ``evaluate``'s metrics.json has it)."""
        from tqdm import tqdm

        paths = [str(path) for path in paths]
        results = [None] * len(paths)
        pending = []
        # maps: as data URLs and/or PNG files; taken: the file keys used so far (two a.mp4 get a, a-2)
        explaining = {"urls": explain, "dir": explain_dir, "taken": set()} if explain or explain_dir else None
        with tqdm(total=len(paths), desc="predict", unit="video", file=sys.stderr,
                  disable=not self.progress) as bar:
            for position, path in enumerate(paths):
                started = time.perf_counter()
                seconds = {"decode": 0.0, "faces": 0.0, "crop": 0.0}
                try:
                    data = read_regular_file(path)  # never a FIFO (would hang) or a device (endless)
                    degrade_frames = None
                    if self.degrade is not None:  # h264: the bytes re-encoded before anything reads them
                        key = Path(path).stem  # seeds the frame types' draws, as a shard sample's key does
                        data = self.degrade.source(key, data, None)
                        degrade_frames = functools.partial(self.degrade.frames, key, rng=None)
                    info = probe(data, name=path)
                    seconds["decode"] += time.perf_counter() - started  # reading, re-encoding, probing: decoding
                    clip = self.prepare(data, info, name=path, seconds=seconds, degrade_frames=degrade_frames)
                    del data
                    pending.append((position, path, clip, {**info, "stage_seconds": seconds}))
                except BadVideo as error:  # FileRefused too (a FIFO, a device)
                    results[position] = _error_entry(path, _bad_video_message(error))
                except DfdError as error:
                    results[position] = _error_entry(path, str(error))
                except Exception as error:  # anything else still must not stop the other files
                    results[position] = _error_entry(path, f"{type(error).__name__}: {error}")
                if results[position] is not None:
                    results[position]["seconds"] = round(time.perf_counter() - started, 3)
                if len(pending) == self.batch_size or (pending and position == len(paths) - 1):
                    self._score_batch(pending, results, crops, explaining)
                    pending = []
                bar.update(1)
        if self.perturbation is not None:
            for result in results:
                result["perturbation"] = dict(self.perturbation)
        return results

    def _score_batch(self, batch, results, crops=False, explaining=None):
        started = time.perf_counter()
        try:
            if explaining:  # the same forward pass, plus a backward for the maps
                video_logits, frame_logits, explained = self.explained_logits([clip for _, _, clip, _ in batch])
            else:
                video_logits, frame_logits = self.logits([clip for _, _, clip, _ in batch])
        except Exception as error:  # a model failure fails this batch's files, not the whole run
            for position, path, _, _ in batch:
                results[position] = _error_entry(path, f"{type(error).__name__}: {error}")
            return
        model_seconds = (time.perf_counter() - started) / len(batch)  # each video's share of its batch
        for row, (position, path, clip, info) in enumerate(batch):
            logit = float(video_logits[row])
            if not math.isfinite(logit):  # never a "REAL nan" verdict
                results[position] = _error_entry(path, f"the model gave a non-finite score ({logit})")
                continue
            p_fake = float(self.calibration.probability(logit))
            used = int(clip.mask.sum())
            positions = frame_logits[row, :used].double().numpy()
            faces = clip.meta.get("faces")
            stages = {**info["stage_seconds"], "model": model_seconds}
            stages["total"] = sum(stages.values())
            results[position] = {
                "path": path,
                "p_fake": p_fake,
                "verdict": "FAKE" if p_fake >= self.threshold else "REAL",
                "threshold": self.threshold,
                "p_fake_raw": float(sigmoid(logit)),  # before calibration
                # the per-position scores on the verdict's scale (calibrated as the video's), and before
                self.scores_key: [float(score) for score in self.calibration.probability(positions)],
                f"{self.scores_key}_raw": [float(score) for score in sigmoid(positions)],
                "scales": self.scales(),
                "temperature": self.calibration.temperature,
                "frames_used": used,
                "clip_frames": self.clip.sampler.num_frames,  # more than frames_used: a short video, padded
                "faces_found": (sum(1 for boxes in faces["boxes"] if boxes) if self.faces != NO_FACES and faces
                                else None),
                "video": {key: info[key] for key in VIDEO_INFO},
                "seconds": round(stages["total"], 3),  # decode, faces, crop + its share of the model batch
                "stage_seconds": {stage: round(stages[stage], 3) for stage in STAGES},
            }
            if crops:  # what the model saw, for people (the service's page)
                results[position]["crops"] = crop_thumbnails(clip.frames[:used].numpy())
            if explaining:
                results[position]["explain"] = self._explanation(path, clip, used, explained, row, explaining)

    def scales(self):
        """{result field: the scale its P(fake) values are on}: the verdict's fields are ``calibrated``
        (sigmoid(logit / temperature)) once a calibration exists, else ``raw`` (sigmoid(logit)); the ``*_raw``
        fields are always raw."""
        verdict = "calibrated" if self.calibration.fitted_on or self.calibration.temperature != 1 else "raw"
        return {"p_fake": verdict, "threshold": verdict, self.scores_key: verdict, "p_fake_raw": "raw",
                f"{self.scores_key}_raw": "raw"}

    @torch.no_grad()
    def logits(self, clips):
        """(video logit [B], per-position logits [B,T]) of prepared Clips, on the CPU; P(fake) on the verdict's
        scale is ``self.calibration.probability(logit)`` of either."""
        frames = torch.stack([clip.frames for clip in clips]).to(self.device)
        masks = torch.stack([clip.mask for clip in clips]).to(self.device)
        video_logits, frame_logits = self.model(model_input(frames, self.clip), masks)
        return video_logits.float().cpu(), frame_logits.float().cpu()

    def scores(self, clips):
        """(video logit [B], raw P(fake) per position [B,T]) of prepared Clips, on the CPU: ``logits`` with
        sigmoid on the positions, before calibration."""
        video_logits, frame_logits = self.logits(clips)
        return video_logits, torch.sigmoid(frame_logits)

    def explained_logits(self, clips):
        """``logits`` of prepared Clips and the evidence maps from the same forward pass (plus one backward):
        (video logit [B], per-position logits [B,T], an Explanation with maps [B,T,S,S] on the CPU, or the
        one-line reason why there are none: then the logits come from ``logits``)."""
        frames = torch.stack([clip.frames for clip in clips]).to(self.device)
        masks = torch.stack([clip.mask for clip in clips]).to(self.device)
        try:
            explanation = explain_batch(self.model, model_input(frames, self.clip), masks)
        except NotExplainable as reason:
            return (*self.logits(clips), f"no maps: {reason}")
        except Exception as error:  # noqa: BLE001 (the maps are extra: the scores must still come)
            return (*self.logits(clips), f"no maps: {type(error).__name__}: {one_line(error)}")
        explanation.maps = explanation.maps.cpu()
        return explanation.video_logits.float().cpu(), explanation.frame_logits.float().cpu(), explanation

    def _explanation(self, path, clip, used, explained, row, explaining):
        """A result's ``explain``: method, layer and the maps (data URLs and/or files), or a ``note``."""
        if isinstance(explained, str):
            return {"note": explained}
        crops, maps = clip.frames[:used].numpy(), explained.maps[row, :used].numpy()
        entry = {"method": METHOD, "explainer": explained.kind, "layer": explained.layer,
                 "frame_indices": [int(index) for index in clip.indices[:used]]}
        if explaining["urls"]:
            entry["maps"] = [png_data_url(overlay(crop, heatmap)) for crop, heatmap in zip(crops, maps)]
        if explaining["dir"] is not None:
            try:
                entry.update(write_overlays(explaining["dir"], safe_key(path, explaining["taken"]), crops, maps,
                                            clip.indices[:used]))
            except OSError as error:  # a full disk or an unwritable folder: the score still stands
                entry["note"] = f"maps not written: {one_line(error)}"
        return entry


def crop_thumbnails(frames, quality=85):
    """JPEG data URLs of uint8 crops [n,S,S,3]."""
    import base64
    import io

    from PIL import Image

    urls = []
    for frame in frames:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
        urls.append("data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
    return urls

