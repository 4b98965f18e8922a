"""Predict REAL/FAKE for single videos with a trained detector (the ``dfdtrain predict`` command and Python API).

    predictor = Predictor("runs/exp1", faces="mtcnn")
    results = predictor.predict(["a.mp4", "b.mp4"])   # one dict per input, in input order

Each video is seen as training saw it: the model's own sampler (deterministic, evaluation mode), PyAV
decoding, face crops grown by the training margin (boxes detected on the sampled frames and interpolated
over frames without a face) or the training crop without boxes, the training normalisation, and a padding
mask for videos shorter than the clip. A bad file gives an error entry and never stops the others.
"""

import sys

import numpy as np
import torch

from dfdtrain.data.augment import InputConfig, to_model_input
from dfdtrain.data.crops import crop_and_resize, crop_regions
from dfdtrain.data.decoders import build_decoder
from dfdtrain.data.sampler import SamplerConfig, sample_indices
from dfdtrain.data.video import probe
from dfdtrain.errors import BadVideo, DfdError
from dfdtrain.models.bundle import load_detector

FACE_MODES = ("mtcnn", "none")


class _Prepared:
    """One video ready for the model: its padded clip, mask and what to report besides the scores."""

    def __init__(self, position, path, clip, mask, frames_used, faces_found, video_info):
        self.position = position
        self.path = path
        self.clip = clip  # uint8 [N, S, S, 3], zeros at padded frames
        self.mask = mask  # bool [N]
        self.frames_used = frames_used
        self.faces_found = faces_found
        self.video_info = video_info


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
        self.faces = faces
        self.batch_size = batch_size
        self.progress = progress
        settings = self.settings
        self.num_frames = num_frames or settings["num_frames"]
        self.sampler = SamplerConfig(mode=settings["sampler"], num_frames=self.num_frames,
                                     stride=settings.get("stride", 1), every=settings.get("every", 1))
        self.image_size = int(settings["image_size"])
        self.crop_mode = settings["crop"]
        self.margin = settings["margin"]
        self.threshold = settings["threshold"]
        self.input_config = InputConfig(mean=tuple(settings["mean"]), std=tuple(settings["std"]),
                                        transform=settings.get("input_transform", "rgb"))
        self.decoder = build_decoder("pyav")
        self._face_detector = None  # built on first use: MTCNN takes a moment to load

    def face_detector(self):
        if self._face_detector is None:
            from dfdtrain.data.faces import build_face_detector

            self._face_detector = build_face_detector("mtcnn", device=str(self.device))
        return self._face_detector

    def predict(self, paths):
        """One dict per path, in input order: p_fake, verdict, frame scores, ... or {"path", "error"}."""
        from tqdm import tqdm

        paths = [str(path) for path in paths]
        results = [None] * len(paths)
        pending = []
        with tqdm(total=len(paths), desc="predict", unit="video", file=sys.stderr,
                  disable=not self.progress) as bar:
            for position, path in enumerate(paths):
                prepared = self._prepare_or_error(position, path)
                if isinstance(prepared, dict):
                    results[position] = prepared
                    bar.update(1)
                    continue
                pending.append(prepared)
                if len(pending) == self.batch_size:
                    self._score_batch(pending, results)
                    bar.update(len(pending))
                    pending = []
            if pending:
                self._score_batch(pending, results)
                bar.update(len(pending))
        return results

    def _prepare_or_error(self, position, path):
        try:
            return self._prepare(position, path)
        except BadVideo as error:
            return _error_entry(path, _bad_video_message(error))
        except DfdError as error:
            return _error_entry(path, str(error))
        except Exception as error:  # anything else still must not stop the other files
            return _error_entry(path, f"{type(error).__name__}: {error}")

    def _prepare(self, position, path):
        info = probe(path)
        video_info = {key: info[key] for key in ("frames", "fps", "width", "height", "codec")}
        indices, mask = sample_indices(info["frames"], self.sampler, None)
        if len(indices) == 0:
            raise BadVideo(path, "zero-length", "no frames")
        frames = self.decoder.read(path, indices, name=path)  # uint8 [n, H, W, 3], upright
        height, width = frames.shape[1:3]  # after rotation: may differ from the probe's header size
        faces_found = None
        meta = {}
        if self.faces == "mtcnn" and self.crop_mode == "face":
            detections = self.face_detector().detect(frames)
            faces_found = sum(1 for faces in detections if faces)
            if faces_found == 0:
                return _error_entry(path, f"no face found in {len(indices)} sampled frames")
            meta = {"faces": {"frames": [int(index) for index in indices], "boxes": detections}}
        regions, _ = crop_regions(meta, indices, width, height, self.crop_mode, self.margin)
        crops = crop_and_resize(torch.from_numpy(np.ascontiguousarray(frames)), regions, self.image_size)
        clip = torch.zeros((self.num_frames, self.image_size, self.image_size, 3), dtype=torch.uint8)
        clip[:len(indices)] = crops
        return _Prepared(position, path, clip, torch.from_numpy(mask), len(indices), faces_found, video_info)

    def _score_batch(self, batch, results):
        try:
            video_scores, frame_scores = self._run_model(batch)
        except Exception as error:  # a model failure fails this batch's files, not the whole run
            for prepared in batch:
                results[prepared.position] = _error_entry(prepared.path, f"{type(error).__name__}: {error}")
            return
        for row, prepared in enumerate(batch):
            p_fake = float(video_scores[row])
            results[prepared.position] = {
                "path": prepared.path,
                "p_fake": p_fake,
                "verdict": "FAKE" if p_fake >= self.threshold else "REAL",
                "frame_scores": [float(score) for score in frame_scores[row, :prepared.frames_used]],
                "frames_used": prepared.frames_used,
                "faces_found": prepared.faces_found,
                "video": prepared.video_info,
            }

    @torch.no_grad()
    def _run_model(self, batch):
        clips = torch.stack([prepared.clip for prepared in batch]).to(self.device)
        masks = torch.stack([prepared.mask for prepared in batch]).to(self.device)
        inputs = to_model_input(clips, self.input_config)
        video_logits, frame_logits = self.model(inputs, masks)
        return torch.sigmoid(video_logits.float()).cpu(), torch.sigmoid(frame_logits.float()).cpu()


def predict_videos(checkpoint, paths, **options):
    """Shorthand: ``Predictor(checkpoint, **options).predict(paths)``."""
    return Predictor(checkpoint, **options).predict(paths)
