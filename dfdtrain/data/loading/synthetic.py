"""The loader's synthesis stage: a training source with ``synthesis: sbi|vb`` (``data.train_sources``) turns a
fixed fraction of its real samples into synthetic fakes, on the fly, in the DataLoader workers.

Where: in ``ClipDecoder``, right after the clip contract's ``make_clip`` (sample -> decode -> crop -> resize ->
pad), on the clip's uint8 frames [T,S,S,3] and before ``model_input`` (ELA, augmentation, normalisation: the
fakes are augmented like every other sample). The landmarks are those of the face track the clip was cut from
(``data.face_track``: the best one, or the random one drawn), one set per stored frame (``--landmarks dlib68`` at
shard time), taken at ``clip.indices`` and mapped into the clip's pixels (``landmarks_in_clip``); padded frames
and frames without landmarks stay real.

Which samples (``data.synthesis_fraction`` = f): every (rank, worker) stream counts the real (label 0) samples
it decodes from each synthesis source; the k-th of them (k = 1, 2, ...) is synthesised when floor(k f) > floor((k
- 1) f). So f = 0.5 is every second one, 0.25 every fourth, 1 all: over any run of that stream the fakes are
within one sample of f x its real samples, without a coin per sample (a batch of such samples holds
round-about f of them; with several sources in a batch, f of each synthesis source's reals). Fakes a source
held already stay fakes and are not counted.

Seeding: ``synthesis_rng(seed, epoch, rank, (key, track_id, worker, occurrence))``, occurrence = how often this
(rank, worker) stream drew that track this epoch (a small source is re-read), worker = the DataLoader worker (two
workers re-reading one shard do not make the same fake). The stream itself is seeded by (seed, epoch, rank,
worker), so a rebuilt loader (a resumed run, with the same ``data.num_workers``) makes the same fakes.

A synthesised sample: label 1, ``synthetic`` True (the batch's bool tensor [B] and its meta), ``meta["synthesis"]``
its method and ``meta["synthesis_sample"]`` its seed tuple. A chosen sample none of whose frames has landmarks is
kept real (``meta["synthesis_kept_real"]``) and counted (``sources.SourceTally``).

Evaluation (``data.val_synthesis``, ``evaluate --synthesis``): ``Twins`` puts beside every real clip its
synthetic twin, key ``KEY+METHOD``, seeded by (seed, key, track) alone, so any number of ranks, workers or batch
size scores the same fakes; the metrics report the twins apart from the real data.
"""

import collections
import dataclasses
import math

import numpy as np

from dfdtrain.core.errors import DfdError
from dfdtrain.data import storage
from dfdtrain.data.faces.landmarks import landmarks_available, missing_landmarks_line, track_points
from dfdtrain.data.loading.stages import worker_slot
from dfdtrain.data.loading.synthesis import LANDMARK_POINTS, SYNTHESES, landmarks_in_clip, synthesis_rng


def chosen(position, fraction):
    """Whether the ``position``-th (0-based) real sample of a synthesis source's stream is made fake."""
    return math.floor((position + 1) * fraction + 1e-9) > math.floor(position * fraction + 1e-9)


def check_landmarks(sources):
    """Refuse, in one line naming the shard option, a synthesis source whose shard folders' index.json says
    their face tracks carry no landmarks (a folder without index.json is checked sample by sample instead)."""
    from dfdtrain.data.shards.catalog import folder_indexes

    for source in sources:
        if not source.synthesis:
            continue
        for folder, index in sorted(folder_indexes(source.urls).items(), key=lambda item: str(item[0])):
            if index is not None and not landmarks_available(index):
                raise DfdError(f"{source.key} (synthesis {source.synthesis}): "
                               + missing_landmarks_line(storage.redact(folder), need=f"synthesis {source.synthesis}"))


def clip_landmarks(stored, clip, size, num_frames):
    """The landmarks of ``clip`` in the clip's pixels, from its track's ``stored`` points (``track_points``:
    [stored frames, 68, 2]): float [T,68,2], NaN rows where a frame has none and at padded positions."""
    points = np.full((len(clip.indices), LANDMARK_POINTS, 2), np.nan)
    if stored.ndim == 3 and stored.shape[1:] == (LANDMARK_POINTS, 2):
        for position, index in enumerate(clip.indices):
            if 0 <= int(index) < len(stored):
                points[position] = stored[int(index)]
    padded = np.full((num_frames, LANDMARK_POINTS, 2), np.nan)
    padded[:len(points)] = landmarks_in_clip(points, clip.regions, size) if len(points) else points
    return padded


def synthesise_clip(name, sample, clip, rng):
    """``SYNTHESES[name]`` on a face clip's uint8 frames with its track's landmarks (read from ``sample``, the
    shard sample the clip was cut from): the Synthesis result. No landmarks: one line naming the shard option."""
    stored = track_points(sample, clip.meta.get("track"))
    if stored is None:
        where = storage.redact(sample.get("__url__") or sample.get("__key__") or "this sample")
        raise DfdError(missing_landmarks_line(where, need=f"synthesis {name}"))
    size, count = int(clip.frames.shape[1]), int(clip.frames.shape[0])
    return SYNTHESES.get(name)(clip.frames, clip_landmarks(stored, clip, size, count), rng)


@dataclasses.dataclass
class TwinsSource:
    """``check_landmarks``' view of evaluation shards with twins."""
    synthesis: str
    urls: list
    key: str = "data.val_synthesis"


class Twins:
    """Evaluation: each real clip (a list of it and its synthetic twin) and each fake clip (alone); see the
    module's docstring. A real clip none of whose frames has landmarks gets no twin (``synthesis_kept_real``)."""

    def __init__(self, name, seed):
        self.name, self.seed = name, seed

    def __call__(self, sample, clip, item):
        if item["label"] != 0:
            return item
        identity = (item["key"], clip.meta.get("track_id", 0))
        result = synthesise_clip(self.name, sample, clip, synthesis_rng(self.seed, 0, 0, identity))
        if not result.blended.any():
            item["meta"]["synthesis_kept_real"] = True
            return item
        key = f"{item['key']}+{self.name}"
        meta = {**item["meta"], "synthetic": True, "label": 1, "synthesis": self.name, "twin_of": item["key"]}
        return [item, {**item, "frames": result.frames, "label": 1.0, "synthetic": True, "key": key, "meta": meta}]


class Synthesiser:
    """The synthesis stage's settings and, in each worker, its counts (the module's docstring)."""

    def __init__(self, seed, epoch, rank, fraction):
        self.seed, self.epoch, self.rank, self.fraction = seed, epoch, rank, fraction
        self.positions, self.occurrences = collections.Counter(), collections.Counter()

    def __call__(self, sample, clip, item):
        """``item`` (a ClipDecoder batch item of ``clip``) made synthetic when its turn has come."""
        name = sample.get("synthesis")
        if not name or item["label"] != 0:
            return item
        meta = item["meta"]
        meta["synthetic"] = False
        source = sample.get("source", 0)
        track_id = clip.meta.get("track_id", 0)
        occurrence = self.occurrences[(item["key"], track_id)]
        self.occurrences[(item["key"], track_id)] += 1
        position = self.positions[source]
        self.positions[source] += 1
        if not chosen(position, self.fraction):
            return item
        identity = (item["key"], track_id, worker_slot(self.rank, 1)[0], occurrence)
        result = synthesise_clip(name, sample, clip, synthesis_rng(self.seed, self.epoch, self.rank, identity))
        if not result.blended.any():
            meta["synthesis_kept_real"] = True
            return item
        meta.update(synthetic=True, label=1, synthesis=name, synthesis_sample=list(identity))
        return {**item, "frames": result.frames, "label": 1.0, "synthetic": True}
