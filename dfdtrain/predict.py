"""Predict REAL/FAKE for single videos with a trained detector (the ``dfdtrain predict`` command and Python API).

    predictor = Predictor("runs/exp1", faces="mtcnn")
    results = predictor.predict(["a.mp4", "b.mp4"])   # one dict per input, in input order

Each video becomes the clip training made of it, through the same clip contract (``dfdtrain.data.clips``) and
the detector's own clip spec: its sampler (deterministic, evaluation mode), PyAV decoding, face crops grown by
the training margin (boxes detected on the sampled frames by MTCNN, interpolated over frames without a face)
or the training crop without boxes, the training input size, transform and normalisation, and a padding mask
for videos shorter than the clip. A bad file gives an error entry and never stops the others; so does anything
that is not a regular file (a FIFO, a device such as /dev/zero, a directory): it is refused unread, and a file
is read once, at most its size when opened.
"""

import dataclasses
import math
import sys
import time

import torch

from dfdtrain.data.clips import make_clip, model_input
from dfdtrain.data.decoders import build_decoder
from dfdtrain.data.video import probe
from dfdtrain.errors import BadVideo, DfdError
from dfdtrain.fileio import FileRefused, read_regular_file
from dfdtrain.models.bundle import load_detector
from dfdtrain.models.detector import detector_score_kind

FACE_MODES = ("mtcnn", "none")
VIDEO_INFO = ("frames", "fps", "width", "height", "codec")


def _one_line(text):
    return " ".join(str(text).split())


def _error_entry(path, message):
    return {"path": str(path), "error": _one_line(message)}


def _bad_video_message(error):
    return error.reason + (f" ({error.detail})" if error.detail else "")


class Predictor:
    """A loaded detector plus everything needed to turn video files into p_fake scores."""

    def __init__(self, checkpoint, device="cpu", faces="mtcnn", num_frames=None, batch_size=4, progress=True):
        if faces not in FACE_MODES:
            raise DfdError(f"faces must be one of {', '.join(FACE_MODES)}, not {faces!r}")
        if num_frames is not None and num_frames < 1:
            raise DfdError("the number of frames must be at least 1")
        if batch_size < 1:
            raise DfdError("the batch size must be at least 1")
        self.device = torch.device(device)
        self.model, self.settings = load_detector(checkpoint, self.device)
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
            from dfdtrain.data.faces import build_face_detector

            self._face_detector = build_face_detector("mtcnn", device=str(self.device))
        return self._face_detector

    def prepare(self, source, meta=None, name=None):
        """The Clip of one video (path or bytes) as the detector sees it.

        ``meta``: what is known of the video, e.g. a shard sample's json (stored face boxes, or a face-clip
        sample's track); by default its probe. Without stored boxes and with ``faces="mtcnn"``, faces are
        detected on the sampled frames.
        """
        name = name or (str(source) if not isinstance(source, (bytes, bytearray)) else "<bytes>")
        meta = meta if meta is not None else probe(source, name=name)
        detector = self.face_detector() if self.faces == "mtcnn" and self.clip.crop == "face" else None
        return make_clip(self.decoder, source, meta, self.clip, name=name, face_detector=detector)

    def predict(self, paths, crops=False):
        """One dict per path, in input order: p_fake (calibrated by the detector's temperature; p_fake_raw
        before), verdict at the detector's threshold, the per-position scores (``frame_scores``, or
        ``step_scores`` / ``token_scores`` for heads whose positions are not judged alone: SCORE_KINDS), ... or
        {"path", "error"}. ``crops``: also the crops the model saw, as JPEG data URLs (``crops``)."""
        from tqdm import tqdm

        paths = [str(path) for path in paths]
        results = [None] * len(paths)
        pending = []
        with tqdm(total=len(paths), desc="predict", unit="video", file=sys.stderr,
                  disable=not self.progress) as bar:
            for position, path in enumerate(paths):
                started = time.perf_counter()
                try:
                    data = read_regular_file(path)  # never a FIFO (would hang) or a device (endless)
                    info = probe(data, name=path)
                    clip = self.prepare(data, info, name=path)
                    del data
                    pending.append((position, path, clip, {**info, "seconds": time.perf_counter() - started}))
                except (BadVideo, FileRefused) as error:
                    results[position] = _error_entry(path, _bad_video_message(error))
                except DfdError as error:
                    results[position] = _error_entry(path, str(error))
                except Exception as error:  # anything else still must not stop the other files
                    results[position] = _error_entry(path, f"{type(error).__name__}: {error}")
                if results[position] is not None:
                    results[position]["seconds"] = round(time.perf_counter() - started, 3)
                if len(pending) == self.batch_size or (pending and position == len(paths) - 1):
                    self._score_batch(pending, results, crops)
                    pending = []
                bar.update(1)
        return results

    def _score_batch(self, batch, results, crops=False):
        started = time.perf_counter()
        try:
            video_logits, frame_scores = self.scores([clip for _, _, clip, _ in batch])
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
            faces = clip.meta.get("faces")
            results[position] = {
                "path": path,
                "p_fake": p_fake,
                "verdict": "FAKE" if p_fake >= self.threshold else "REAL",
                "threshold": self.threshold,
                "p_fake_raw": float(torch.sigmoid(torch.tensor(logit, dtype=torch.float64))),  # before calibration
                self.scores_key: [float(score) for score in frame_scores[row, :used]],
                "frames_used": used,
                "faces_found": sum(1 for boxes in faces["boxes"] if boxes) if self.faces == "mtcnn" and faces else None,
                "video": {key: info[key] for key in VIDEO_INFO},
                "seconds": round(info["seconds"] + model_seconds, 3),  # decode, faces, crop + model share
            }
            if crops:  # what the model saw, for people (the service's page)
                results[position]["crops"] = crop_thumbnails(clip.frames[:used].numpy())

    @torch.no_grad()
    def scores(self, clips):
        """(video logit [B], P(fake) per frame [B,T]) of prepared Clips, on the CPU; a video's P(fake) is
        ``self.calibration.probability(logit)``."""
        frames = torch.stack([clip.frames for clip in clips]).to(self.device)
        masks = torch.stack([clip.mask for clip in clips]).to(self.device)
        video_logits, frame_logits = self.model(model_input(frames, self.clip), masks)
        return video_logits.float().cpu(), torch.sigmoid(frame_logits.float()).cpu()


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


def predict_videos(checkpoint, paths, **options):
    """Shorthand: ``Predictor(checkpoint, **options).predict(paths)``."""
    return Predictor(checkpoint, **options).predict(paths)
