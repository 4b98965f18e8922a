"""Streaming loaders over the shards: shards -> sampled, decoded, cropped clips -> normalised batches.

A chain of small stages (webdataset style), run in DataLoader workers:
    shard urls -> tar samples -> shuffle -> (class balance) -> decode + crop -> batch
and, in the main process, to device -> augment (training) -> normalise.

Training streams are resampled: every worker of every rank draws shards at random (seeded by seed, epoch,
rank and worker) forever, and an epoch is a fixed number of batches per rank. So every rank runs the same
number of steps whatever the shard sizes, even with fewer shards than ranks x workers: DDP cannot hang.
Evaluation streams give each shard to exactly one (rank, worker) slot, so every video is scored exactly
once; ranks may get different counts and gather their results on rank 0 at the end.

A sample that cannot be decoded is skipped and counted (key + reason), never a crash or a hang; the
records travel with the batches to the main process (``loader.skipped``).
"""

import dataclasses
import glob
import hashlib
import io
import json
import os
import random
from itertools import islice
from pathlib import Path

import numpy as np
import torch
import webdataset as wds

from dfdtrain.data.augment import AugmentConfig, InputConfig, to_model_input
from dfdtrain.data.crops import crop_and_resize, crop_regions
from dfdtrain.data.sampler import SamplerConfig, sample_indices
from dfdtrain.data.video import probe
from dfdtrain.errors import BadVideo, DfdError

NOT_VIDEO_FIELDS = ("__key__", "__url__", "__local_path__", "json")
FACE_TRACK_CHOICES = ("first", "random")


@dataclasses.dataclass
class LoaderConfig:
    shards: object = None  # a glob ('shards/train-*.tar'), a brace pattern, or a list of paths
    batch_size: int = 8  # per rank
    num_workers: int = 2
    sampler: SamplerConfig = dataclasses.field(default_factory=SamplerConfig)
    image_size: int = 224
    crop: str = "face"  # face (stored boxes, else centre square) | center | full
    margin: float = 1 / 3  # face box growth per side, as a fraction of its size
    decoder: str = "pyav"
    shuffle_buffer: int = 64
    epoch_samples: int = 0  # training samples per epoch over all ranks; 0 = the shards' sample count
    class_balance: bool = False  # resample the stream to equal real/fake counts (pyav/torchcodec path)
    dali_canvas: int = 0  # DALI path: resize decoded frames to this square first (needed for mixed sizes)
    face_track: str = "first"  # face-clip shards: first (track 0) | random (any stored track, training only)
    seed: int = 0

    def __post_init__(self):
        if self.face_track not in FACE_TRACK_CHOICES:
            raise DfdError(f"face_track must be one of {', '.join(FACE_TRACK_CHOICES)}, not {self.face_track!r}")


def loader_config(data, shards, image_size, seed=0):
    """A LoaderConfig from the experiment's DataConfig (dfdtrain.config) for these shards."""
    return LoaderConfig(shards=shards, batch_size=data.batch_size, num_workers=data.num_workers,
                        sampler=SamplerConfig(data.sampler, data.num_frames, data.stride, data.every),
                        image_size=image_size, crop=data.crop, margin=data.margin, decoder=data.decoder,
                        shuffle_buffer=data.shuffle_buffer, epoch_samples=data.epoch_samples,
                        class_balance=data.class_balance, seed=seed, dali_canvas=data.dali_canvas,
                        face_track=data.face_track)


def expand_shards(spec):
    """Sorted shard paths from a glob, a brace pattern ('train-{000000..000009}.tar') or a list."""
    if spec is None:
        raise DfdError("no shards given")
    patterns = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    paths = []
    for pattern in patterns:
        for expanded in wds.shardlists.expand_urls(str(pattern)):
            matches = sorted(glob.glob(expanded)) if any(c in expanded for c in "*?[") else [expanded]
            paths += matches
    if not paths:
        raise DfdError(f"{spec}: no shard matches")
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise DfdError(f"{missing[0]}: shard not found")
    return sorted(dict.fromkeys(paths))


def count_samples(shard_paths):
    """Samples in these shards, from the index.json beside them (or by listing the tars)."""
    counts = {}
    for folder in {Path(path).parent for path in shard_paths}:
        index_path = folder / "index.json"
        if index_path.is_file():
            for shard in json.loads(index_path.read_text())["shards"]:
                counts[str(folder / shard["name"])] = shard["samples"]
    total = 0
    for path in shard_paths:
        if path in counts:
            total += counts[path]
        else:
            import tarfile

            with tarfile.open(path) as tar:
                total += sum(1 for member in tar.getmembers() if member.name.endswith(".json"))
    return total


def label_counts(shard_paths):
    """{label: count} over these shards from index.json (for class weights and balancing)."""
    counts = {0: 0, 1: 0}
    for folder in {Path(path).parent for path in shard_paths}:
        index_path = folder / "index.json"
        if not index_path.is_file():
            raise DfdError(f"{index_path}: needed for label counts (written by 'dfdtrain shard')")
        names = {Path(path).name for path in shard_paths if Path(path).parent == folder}
        for shard in json.loads(index_path.read_text())["shards"]:
            if shard["name"] in names:
                for label, count in shard["labels"].items():
                    counts[int(label)] += count
    return counts


def positive_class_weight(shard_paths):
    """BCE pos_weight = real count / fake count (Celeb-DF and DFDC are far from balanced)."""
    counts = label_counts(shard_paths)
    if not counts[1]:
        raise DfdError("no fake samples in these shards: cannot weight the classes")
    return counts[0] / counts[1]


def distributed_rank_and_world():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _worker():
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


# ---------------------------------------------------------------------------------------------- stages
def resampled_shards(urls, seed, epoch, rank):
    """Forever: a random shard for this (rank, worker), seeded so runs are reproducible."""
    worker, _ = _worker()
    rng = random.Random(f"{seed}:{epoch}:{rank}:{worker}")
    while True:
        yield {"url": rng.choice(urls)}


def assigned_shards(urls, rank, world_size):
    """Each shard to exactly one (rank, worker) slot: shard i goes to slot i mod (ranks x workers)."""
    worker, workers = _worker()
    slot, slots = rank * workers + worker, world_size * workers
    for url in urls[slot::slots]:
        yield {"url": url}


def parse_meta(samples):
    for sample in samples:
        sample["meta"] = json.loads(sample["json"])
        yield sample


def balance_classes(samples, keep_probability, rng):
    """Keep each sample with its label's probability: the stream becomes class-balanced."""
    for sample in samples:
        if rng.random() < keep_probability[int(sample["meta"]["label"])]:
            yield sample


class ClipDecoder:
    """Sample frame indices, decode exactly those frames, crop and resize: one video -> a padded clip."""

    def __init__(self, config):
        self.config = config
        self.decoder = None  # built in the worker process on first use (a DALI pipeline cannot be pickled)

    def __call__(self, sample, rng):
        if self.decoder is None:
            from dfdtrain.data.decoders import build_decoder

            self.decoder = build_decoder(self.config.decoder)
        key = sample["__key__"]
        meta, video_field = self._video_member(sample, rng)
        data, name = sample[video_field], f"{key}.{video_field}"
        indices, mask = sample_indices(meta["frames"], self.config.sampler, rng)
        if len(indices) == 0:
            raise BadVideo(key, "undecodable", "no frames")
        try:
            frames = self.decoder.read(data, indices, name=name)
        except BadVideo as error:
            if error.reason != "truncated":
                raise
            # the stored frame count was wrong (a lying header, a cut file): count again, sample again
            meta = {**meta, "frames": probe(data, name=name)["frames"]}
            indices, mask = sample_indices(meta["frames"], self.config.sampler, rng)
            frames = self.decoder.read(data, indices, name=name)
        frames = torch.from_numpy(frames)
        height, width = frames.shape[1:3]
        regions, from_faces = crop_regions(meta, indices, width, height, self.config.crop, self.config.margin)
        size = self.config.image_size
        clip = torch.zeros((self.config.sampler.num_frames, size, size, 3), dtype=torch.uint8)
        clip[: len(indices)] = crop_and_resize(frames, regions, size)
        if "track" in meta:  # a face clip: where the sampled frames came from in the source video
            meta["source_frame_indices"] = [meta["track"]["source_frames"][index] for index in indices]
        meta = {k: v for k, v in meta.items() if k not in ("faces", "tracks", "track")}  # used; keep the batch light
        meta.update(frame_indices=indices.tolist(), face_crop=from_faces)
        return {"frames": clip, "mask": torch.from_numpy(mask), "label": float(meta["label"]), "key": key,
                "meta": meta}

    def _video_member(self, sample, rng):
        """(meta, field of the video to decode). A face-clip sample holds one clip per face track: track 0
        (or, in training with ``face_track="random"``, any track), whose frame count the sampler then uses."""
        meta = sample["meta"]
        if meta.get("store") == "faces":
            tracks = meta["tracks"]
            choice = 0
            if self.config.face_track == "random" and rng is not None:
                choice = int(rng.integers(len(tracks)))
            track = tracks[choice]
            if track["member"] not in sample:
                raise BadVideo(sample["__key__"], "unreadable", f"face-clip sample lacks its {track['member']} member")
            return {**meta, "frames": track["frames"], "track_id": track["id"], "track": track}, track["member"]
        video_field = next((field for field in sample if field not in NOT_VIDEO_FIELDS + ("meta",)), None)
        if video_field is None:
            raise BadVideo(sample["__key__"], "unreadable", "sample has no video member")
        return meta, video_field


class EmbeddingReader:
    """A cached sample (``dfdtrain embed``): ``<key>.npy`` frame features [T,D] + json with the mask."""

    def __call__(self, sample, rng):
        meta = sample["meta"]
        if "npy" not in sample:
            raise BadVideo(sample["__key__"], "unreadable", "sample has no .npy features")
        features = np.load(io.BytesIO(sample["npy"]), allow_pickle=False).astype(np.float32)
        return {"frames": torch.from_numpy(features), "mask": torch.tensor(meta["mask"], dtype=torch.bool),
                "label": float(meta["label"]), "key": sample["__key__"], "meta": meta}


def decode_clips(samples, clip_decoder, rng):
    """Decode samples; a broken one becomes a skip record (key, reason) instead of an exception."""
    for sample in samples:
        try:
            yield clip_decoder(sample, rng)
        except BadVideo as error:
            yield {"skip": {"key": sample.get("__key__"), "reason": error.reason, "detail": error.detail}}
        except Exception as error:  # a decoder bug or an exotic file must not kill a long job
            yield {"skip": {"key": sample.get("__key__"), "reason": "error", "detail": f"{type(error).__name__}: {error}"}}


def batch_clips(items, batch_size, partial):
    """Collate clips into batches; skip records ride along with the next batch (or an empty one)."""
    clips, skipped = [], []
    for item in items:
        if "skip" in item:
            skipped.append(item["skip"])
            continue
        clips.append(item)
        if len(clips) == batch_size:
            yield collate(clips, skipped)
            clips, skipped = [], []
    if (clips and partial) or skipped:
        yield collate(clips if partial else [], skipped)


def collate(clips, skipped):
    if not clips:
        return {"frames": torch.zeros(0, dtype=torch.uint8), "mask": torch.zeros(0, dtype=torch.bool),
                "label": torch.zeros(0), "key": [], "meta": [], "skipped": skipped}
    return {"frames": torch.stack([clip["frames"] for clip in clips]),
            "mask": torch.stack([clip["mask"] for clip in clips]),
            "label": torch.tensor([clip["label"] for clip in clips], dtype=torch.float32),
            "key": [clip["key"] for clip in clips], "meta": [clip["meta"] for clip in clips], "skipped": skipped}


def _worker_init(_):
    torch.set_num_threads(1)  # workers are processes; threads inside them would oversubscribe the cores


# ---------------------------------------------------------------------------------------------- loader
class VideoLoader:
    """Batches {frames float [B,T,3,S,S] normalised, mask bool [B,T], label float [B], key, meta} on device
    (``source="embeddings"``: {features float [B,T,D], ...} from an embedding cache instead of frames).

    ``train=True``: resampled, shuffled, augmented, ``len(loader)`` batches per epoch on every rank.
    ``train=False``: each video exactly once across ranks, deterministic sampling, no augmentation.
    Call ``set_epoch(epoch)`` before each training epoch for a new, reproducible draw.
    """

    def __init__(self, config, train, input_config=None, augment_config=None, device="cpu", rank=None,
                 world_size=None, source="videos", augment=True):
        if source not in ("videos", "embeddings"):
            raise DfdError(f"data source must be videos or embeddings, not {source!r}")
        self.config = config
        self.train = train
        self.source = source
        self.input_config = input_config or InputConfig()
        self.augment_config = (augment_config or AugmentConfig()) if (train and augment) else None
        self.device = torch.device(device)
        default_rank, default_world = distributed_rank_and_world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        self.urls = expand_shards(config.shards)
        self.epoch = 0
        self.skipped = []
        self.dali = self._dali_loader() if source == "videos" else None
        if train and self.dali is not None:
            self.batches_per_epoch = len(self.dali)
        elif train:
            samples = config.epoch_samples or count_samples(self.urls)
            self.batches_per_epoch = max(1, samples // (self.world_size * config.batch_size))
            self.keep_probability = None
            if config.class_balance:
                counts = label_counts(self.urls)
                smallest = min(count for count in counts.values() if count) or 1
                self.keep_probability = {label: (smallest / count if count else 0.0) for label, count in counts.items()}

    def _dali_loader(self):
        """DALI reads, samples and decodes the shards itself (NVDEC on a GPU) when the decoder says so."""
        from dfdtrain.data.decoders import dali_usable

        if not (self.config.decoder == "dali" or (self.config.decoder == "auto" and dali_usable())):
            return None
        from dfdtrain.data.dali import DaliShardLoader

        sampler = self.config.sampler
        canvas = self.config.dali_canvas
        return DaliShardLoader(self.urls, self.config.batch_size, sampler.num_frames, self.rank, self.world_size,
                               device="gpu" if self.device.type == "cuda" else "cpu", seed=self.config.seed,
                               train=self.train, mode=sampler.mode, stride=sampler.stride, every=sampler.every,
                               resize=(canvas, canvas) if canvas else None)

    def _crop_dali_batch(self, raw):
        """Face/centre crops of a DALI batch, on its device (boxes are in the source video's pixels)."""
        frames = raw["frames"]
        canvas_h, canvas_w = frames.shape[2:4]
        size, clips = self.config.image_size, []
        for position, meta in enumerate(raw["meta"]):
            count = int(raw["mask"][position].sum())
            indices = raw["indices"][position][:count].numpy()
            width, height = meta.get("width", canvas_w), meta.get("height", canvas_h)
            regions, _ = crop_regions(meta, indices, width, height, self.config.crop, self.config.margin)
            scale = np.array([canvas_w / width, canvas_h / height] * 2)
            clip = torch.zeros((frames.shape[1], size, size, 3), dtype=torch.uint8, device=frames.device)
            clip[:count] = crop_and_resize(frames[position, :count], regions * scale, size,
                                           stretch=bool(self.config.dali_canvas))
            clips.append(clip)
        return torch.stack(clips)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        if self.train:
            return self.batches_per_epoch
        raise TypeError("an evaluation loader has no fixed length per rank (ranks may get different counts)")

    def _pipeline(self):
        config = self.config
        clip_decoder = ClipDecoder(config) if self.source == "videos" else EmbeddingReader()
        if self.train:
            seed = f"{config.seed}:{self.epoch}:{self.rank}"
            # stages are called inside each worker when iteration starts: per-worker random generators
            stages = [
                lambda: resampled_shards(self.urls, config.seed, self.epoch, self.rank),
                wds.tarfile_to_samples(handler=wds.warn_and_continue),
                lambda samples: wds.filters._shuffle(samples, config.shuffle_buffer, min(config.shuffle_buffer, 16),
                                                     rng=random.Random(_worker_seed(seed, "shuffle"))),
                parse_meta,
            ]
            if self.keep_probability:
                stages.append(lambda samples: balance_classes(samples, self.keep_probability,
                                                              random.Random(_worker_seed(seed, "balance"))))
            stages.append(lambda samples: decode_clips(samples, clip_decoder,
                                                       np.random.default_rng(_worker_seed(seed, "frames"))))
            stages.append(lambda items: batch_clips(items, config.batch_size, partial=False))
        else:
            stages = [
                lambda: assigned_shards(self.urls, self.rank, self.world_size),
                wds.tarfile_to_samples(handler=wds.warn_and_continue),
                parse_meta,
                lambda samples: decode_clips(samples, clip_decoder, None),
                lambda items: batch_clips(items, config.batch_size, partial=True),
            ]
        return wds.DataPipeline(*stages)

    def __iter__(self):
        generator = np.random.default_rng([self.config.seed, self.epoch, self.rank, 7]) if self.train else None
        for raw in (self._dali_batches() if self.dali is not None else self._worker_batches()):
            frames = raw["frames"].to(self.device, non_blocking=True)
            if self.source == "embeddings":  # frame features [B,T,D] for a head-only model
                yield {"features": frames, "mask": raw["mask"].to(self.device), "label": raw["label"].to(self.device),
                       "key": raw["key"], "meta": raw["meta"]}
                continue
            yield {
                "frames": to_model_input(frames, self.input_config, self.augment_config, generator),
                "mask": raw["mask"].to(self.device, non_blocking=True),
                "label": raw["label"].to(self.device, non_blocking=True),
                "key": raw["key"],
                "meta": raw["meta"],
            }

    def _worker_batches(self):
        """uint8 clip batches from the DataLoader workers (decode + crop on the CPU)."""
        loader = torch.utils.data.DataLoader(
            self._pipeline(), batch_size=None, num_workers=self.config.num_workers, worker_init_fn=_worker_init,
            persistent_workers=False, pin_memory=self.device.type == "cuda")
        batches = iter(loader)
        if self.train:
            batches = islice(batches, self.batches_per_epoch)
        for raw in batches:
            self.skipped.extend(raw["skipped"])
            if raw["key"]:
                yield raw

    def _dali_batches(self):
        """uint8 clip batches from DALI (decoded on the GPU with NVDEC, or VP9 on the CPU), cropped on device."""
        for raw in self.dali:
            yield {**raw, "frames": self._crop_dali_batch(raw)}


def _worker_seed(seed, purpose):
    """A seed unique to (seed, this worker, purpose), stable across runs (unlike Python's str hash)."""
    worker, _ = _worker()
    return int(hashlib.sha256(f"{seed}:{worker}:{purpose}".encode()).hexdigest()[:16], 16)


def gather_to_rank0(records):
    """Concatenate per-rank lists on rank 0 (other ranks get None); works with unequal lengths."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return list(records)
    world = torch.distributed.get_world_size()
    gathered = [None] * world if torch.distributed.get_rank() == 0 else None
    torch.distributed.gather_object(list(records), gathered, dst=0)
    if gathered is None:
        return None
    return [record for part in gathered for record in part]
