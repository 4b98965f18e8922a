"""Streaming loaders over the shards: shards -> sampled, decoded, cropped clips -> normalised batches.

A chain of small, picklable stages (webdataset style; DataLoader workers may start by fork, spawn or
forkserver), run in DataLoader workers:
    shard urls -> tar samples -> shuffle -> parse meta -> (class balance) -> decode into clips -> batch
and, in the main process, to device -> (ELA) -> augment (training) -> normalise (``clips.model_input``).
The clip a sample becomes is the clip contract's (``dfdtrain.data.loading.clips``), the same as predict's and DALI's.

Training streams are resampled: every worker of every rank draws shards at random (seeded by seed, epoch,
rank and worker) forever, and an epoch is a fixed number of batches per rank. So every rank runs the same
number of steps whatever the shard sizes, even with fewer shards than ranks x workers: DDP cannot hang.
Evaluation streams give each shard to exactly one (rank, worker) slot, so every video is scored exactly
once; ranks may get different counts and gather their results on rank 0 at the end.

Bad data: a sample that cannot be used (``BadVideo``, unreadable metadata) is skipped and recorded (key,
reason, shard) in ``loader.skipped``, never a crash or a hang. Anything else is a bug or a broken set-up,
not bad data: it stops the run with one line naming the stage, the sample and the cause (``LoaderError``).
In training the skip guard stops a stream whose recent samples are mostly skipped (``data.max_skip_fraction``
over ``data.skip_window`` samples): an endless stream of broken videos would otherwise never yield a batch.
"""

import collections
import hashlib
import io
import json
import os
import random
import tarfile

import numpy as np
import torch
import webdataset as wds

from dfdtrain.config import DataConfig
from dfdtrain.data.loading.clips import batch_meta, clip_from_frames, make_clip, model_input, track_meta, video_member
from dfdtrain.data import storage
from dfdtrain.data.shards.catalog import count_samples, label_counts, verify_shards
from dfdtrain.data.storage import expand_shards  # noqa: F401 (part of this module's API)
from dfdtrain.core.errors import BadVideo, DfdError


class LoaderError(DfdError):
    """A stage failed for a reason other than a bad video: the run stops (one line: stage, sample, cause)."""


class SkipGuardTripped(DfdError):
    """Too many of the recent training samples were skipped (``data.max_skip_fraction``)."""


def distributed_rank_and_world():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _worker():
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


def _stable_seed(*parts):
    """A 64-bit seed from ``parts``, the same in every run and process (unlike Python's str hash)."""
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:16], 16)


def _worker_seed(seed, purpose):
    """A seed unique to (seed, this worker, purpose)."""
    worker, _ = _worker()
    return _stable_seed(seed, worker, purpose)


def _one_line(error):
    return " ".join(f"{type(error).__name__}: {error}".split())


def passes_through(sample):
    """A skip or error record: every stage hands it on untouched."""
    return "skip" in sample or "error" in sample


def skip_record(sample, reason, detail=""):
    return {"skip": {"key": sample.get("__key__"), "reason": reason, "detail": detail,
                     "shard": sample.get("__url__")}}


# ---------------------------------------------------------------------------------------------- stages
# Each stage is a small class holding its settings (so the pipeline pickles for spawned workers); a source
# stage is called with no argument, the others with the previous stage's iterator. Random generators are
# made inside the worker, per worker, when iteration starts.


class ResampledShards:
    """Training source: forever a random shard for this (rank, worker), seeded so runs are reproducible."""

    def __init__(self, urls, seed, epoch, rank):
        self.urls, self.seed, self.epoch, self.rank = urls, seed, epoch, rank

    def __call__(self):
        worker, _ = _worker()
        rng = random.Random(f"{self.seed}:{self.epoch}:{self.rank}:{worker}")
        while True:
            yield {"url": rng.choice(self.urls)}


class AssignedShards:
    """Evaluation source: each shard to exactly one (rank, worker) slot, shard i to slot i mod slots."""

    def __init__(self, urls, rank, world_size):
        self.urls, self.rank, self.world_size = urls, rank, world_size

    def __call__(self):
        worker, workers = _worker()
        slot, slots = self.rank * workers + worker, self.world_size * workers
        for url in self.urls[slot::slots]:
            yield {"url": url}


def _zero_after(handle, offset, chunk_bytes=1 << 20):
    """True when every byte of the file from ``offset`` on is zero (a tar's end blocks and padding). A pipe
    cannot seek: there the bytes it still has are checked."""
    if getattr(handle, "seekable", lambda: False)():  # webdataset's pipe has no seekable()
        handle.seek(offset)
    while chunk := handle.read(chunk_bytes):
        if chunk.count(0) != len(chunk):
            return False
    return True


class ReadTars:
    """Shard urls -> samples {__key__, __url__, <ext>: bytes}, members grouped by key as webdataset names them
    (``KEY.mp4`` + ``KEY.json``; ``KEY.track1.mp4`` -> ``track1.mp4``). Local, s3://, http(s):// and pipe: shards
    (``storage.open_shard``: remote reads resume after transient faults).

    A tar that cannot be read to its end is not passed over in silence (webdataset's readers warn, or stop at a
    corrupt header as if the archive ended there): the samples before the damage are used, and one skip record
    names the shard and the byte offset where reading stopped (reason ``unreadable-shard``). The evaluation then
    names every video the shard's index promised and did not deliver (``shard_index.reconcile``). A storage
    fault that retrying did not cure (no such bucket, access denied, a server down for longer than the retry
    budget) is not bad data: an error record, and the run stops with its line.
    """

    def __call__(self, sources):
        for source in sources:
            yield from self.read(source["url"])

    @staticmethod
    def read(url):
        sample, tar, reading = None, None, None
        try:
            with storage.open_shard(url) as handle:
                tar = tarfile.open(fileobj=handle, mode="r|")
                for member in tar:
                    if not member.isreg():
                        continue  # directories, links: never part of a sample (and never followed)
                    key, extension = wds.tariterators.base_plus_ext(member.name)
                    if key is None or key.startswith("__"):
                        continue
                    if sample is not None and sample["__key__"] != key:
                        yield sample
                        sample = None
                    if sample is None:
                        sample = {"__key__": key, "__url__": url}
                    extension = extension.lower()
                    if extension in sample:
                        raise tarfile.ReadError(f"member {member.name} appears twice")
                    reading = member
                    sample[extension] = tar.extractfile(member).read()
                    tar.members, reading = [], None  # a stream holds every header read so far otherwise
                if not _zero_after(handle, tar.offset):  # tarfile ends quietly at a corrupt header: say so
                    raise tarfile.ReadError("invalid tar header (the rest of the file is not the archive's end)")
        except storage.RemoteError as error:
            yield {"error": {"stage": "read", "key": sample and sample["__key__"], "shard": storage.mask(url),
                             "cause": str(error)}}
            return
        except (tarfile.TarError, OSError, EOFError) as error:
            # where it broke: the header of the member being read, or of the next one
            offset = reading.offset if reading is not None else (tar.offset if tar is not None else 0)
            if sample is not None:
                yield sample  # what was read of it: a sample missing its json or video is skipped downstream
            yield {"skip": {"key": None, "reason": "unreadable-shard", "shard": url, "offset": offset,
                            "detail": f"tar read error at byte {offset}: {_one_line(error)}; the rest of the shard "
                                      "was not read"}}
            return
        if sample is not None:
            yield sample


class Shuffle:
    """A shuffle buffer of ``size`` samples (each holds a whole encoded video: keep it small)."""

    def __init__(self, size, seed):
        self.size, self.seed = size, seed

    def __call__(self, samples):
        rng = random.Random(_worker_seed(self.seed, "shuffle"))
        return wds.filters._shuffle(samples, self.size, min(self.size, 16), rng=rng)


def metadata_problem(meta):
    """What makes a sample's metadata unusable (None when it is fine): every stage needs a 0/1 label and a
    whole frame count."""
    if not isinstance(meta, dict):
        return "its metadata is not a JSON object"
    if meta.get("label") not in (0, 1) or isinstance(meta.get("label"), bool):
        return f"its metadata has no 0/1 label (label: {meta.get('label')!r})"
    frames = meta.get("frames")
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 0:
        return f"its metadata has no frame count (frames: {frames!r})"
    return None


class ParseMeta:
    """Each sample's json member -> ``sample["meta"]``; a sample without usable metadata is skipped."""

    def __call__(self, samples):
        for sample in samples:
            if passes_through(sample):
                yield sample
                continue
            try:
                meta = json.loads(sample["json"])
            except KeyError:
                yield skip_record(sample, "unreadable", "the sample has no json member")
                continue
            except (TypeError, ValueError) as error:
                yield skip_record(sample, "unreadable", f"its json member is not JSON ({error})")
                continue
            problem = metadata_problem(meta)
            if problem:
                yield skip_record(sample, "unreadable", problem)
                continue
            sample["meta"] = meta
            yield sample


class BalanceClasses:
    """Keep each sample with its label's probability: the stream becomes class-balanced."""

    def __init__(self, keep_probability, seed):
        self.keep_probability, self.seed = keep_probability, seed

    def __call__(self, samples):
        rng = random.Random(_worker_seed(self.seed, "balance"))
        for sample in samples:
            if passes_through(sample) or rng.random() < self.keep_probability[int(sample["meta"]["label"])]:
                yield sample


class ClipDecoder:
    """One shard sample -> its clip (the clip contract: ``dfdtrain.data.loading.clips.make_clip``) as a batch item."""

    def __init__(self, spec, decoder="pyav", face_track="best"):
        self.spec, self.decoder_name, self.face_track = spec, decoder, face_track
        self.decoder = None  # built in the worker on first use (a DALI pipeline can neither be pickled nor forked)

    def __getstate__(self):
        return {**self.__dict__, "decoder": None}

    def __call__(self, sample, rng):
        if self.decoder is None:
            from dfdtrain.data.decode.decoders import build_decoder

            self.decoder = build_decoder(self.decoder_name)
        meta, field = video_member(sample, self.face_track, rng)
        key = sample["__key__"]
        clip = make_clip(self.decoder, sample[field], meta, self.spec, rng, name=f"{key}.{field}")
        return {"frames": clip.frames, "mask": clip.mask, "label": float(meta["label"]), "key": key,
                "meta": {**batch_meta(clip), "shard": sample.get("__url__")}}  # for the evaluation's accounting


class EmbeddingReader:
    """A cached sample (``dfdtrain embed``): ``<key>.npy`` frame features [T,D] + json with the mask."""

    def __call__(self, sample, rng):
        meta = sample["meta"]
        if "npy" not in sample:
            raise BadVideo(sample["__key__"], "unreadable", "sample has no .npy features")
        features = np.load(io.BytesIO(sample["npy"]), allow_pickle=False).astype(np.float32)
        return {"frames": torch.from_numpy(features), "mask": torch.tensor(meta["mask"], dtype=torch.bool),
                "label": float(meta["label"]), "key": sample["__key__"],
                "meta": {**meta, "shard": sample.get("__url__")}}


class DecodeClips:
    """Samples -> clips with ``reader`` (ClipDecoder or EmbeddingReader). A BadVideo becomes a skip record;
    any other exception an error record, after which the stream ends (the main process stops the run)."""

    def __init__(self, reader, seed=None):
        self.reader, self.seed = reader, seed  # seed None: deterministic sampling (evaluation)

    def __call__(self, samples):
        rng = None if self.seed is None else np.random.default_rng(_worker_seed(self.seed, "frames"))
        for sample in samples:
            if passes_through(sample):
                yield sample
                continue
            try:
                yield self.reader(sample, rng)
            except BadVideo as error:
                yield skip_record(sample, error.reason, error.detail)
            except Exception as error:  # not bad data: a bug or a broken set-up, which no skip would fix
                yield {"error": {"stage": "decode", "key": sample.get("__key__"), "shard": sample.get("__url__"),
                                 "cause": _one_line(error)}}
                return


class BatchClips:
    """Collate clips into batches; skip records ride along with the next batch, or go in a batch of their own
    once ``batch_size`` of them wait (so the main process sees them even when no clip comes)."""

    def __init__(self, batch_size, partial):
        self.batch_size, self.partial = batch_size, partial

    def __call__(self, items):
        clips, skipped = [], []
        for item in items:
            if "error" in item:
                yield {**collate([], skipped), "error": item["error"]}
                return
            if "skip" in item:
                skipped.append(item["skip"])
                if len(skipped) >= self.batch_size:
                    yield collate([], skipped)
                    skipped = []
                continue
            clips.append(item)
            if len(clips) == self.batch_size:
                yield collate(clips, skipped)
                clips, skipped = [], []
        if (clips and self.partial) or skipped:
            yield collate(clips if self.partial else [], skipped)


def collate(clips, skipped):
    """A batch of clips; skip records and this process's storage retries since the last batch ride along."""
    io_faults = storage.take_fault_counts()
    if not clips:
        return {"frames": torch.zeros(0, dtype=torch.uint8), "mask": torch.zeros(0, dtype=torch.bool),
                "label": torch.zeros(0), "key": [], "meta": [], "skipped": skipped, "io_faults": io_faults}
    return {"frames": torch.stack([clip["frames"] for clip in clips]),
            "mask": torch.stack([clip["mask"] for clip in clips]),
            "label": torch.tensor([clip["label"] for clip in clips], dtype=torch.float32),
            "key": [clip["key"] for clip in clips], "meta": [clip["meta"] for clip in clips], "skipped": skipped,
            "io_faults": io_faults}


def _worker_init(_):
    torch.set_num_threads(1)  # workers are processes; threads inside them would oversubscribe the cores


class SkipGuard:
    """Stops a training stream whose last ``window`` samples were mostly skipped (> ``max_fraction``): every
    video broken, or a decoder that cannot read the codec, would otherwise spin without end or train on a
    sliver of the data. ``max_fraction`` 1 turns it off."""

    def __init__(self, max_fraction, window):
        self.max_fraction, self.window = max_fraction, window
        self.recent = collections.deque(maxlen=window)  # True = skipped
        self.first_skips = []

    def update(self, used, skipped):
        self.recent.extend([True] * len(skipped) + [False] * used)
        for item in skipped:  # the first few distinct videos, for the message
            if len(self.first_skips) < 3 and item["key"] not in {first["key"] for first in self.first_skips}:
                self.first_skips.append(item)
        count = sum(self.recent)
        if len(self.recent) == self.window and count > self.max_fraction * self.window:
            reasons = "; ".join(f"{item['key']}: {item['reason']}" + (f" ({item['detail']})" if item["detail"] else "")
                                for item in self.first_skips)
            raise SkipGuardTripped(
                f"skip guard (data.max_skip_fraction {self.max_fraction:g}): {count} of the last {self.window} "
                f"training samples could not be used; first reasons: {reasons}. Fix or drop those videos "
                f"(dfdtrain shard names the bad ones), or raise data.max_skip_fraction")


# ---------------------------------------------------------------------------------------------- loader
class VideoLoader:
    """Batches {frames float [B,T,3,S,S] normalised, mask bool [B,T], label float [B], key, meta} on device
    (``data.source="embeddings"``: {features float [B,T,D], ...} from an embedding cache instead of frames).

    ``shards``: a glob, brace pattern or list of tars. ``clip``: the resolved ClipSpec (what each video
    becomes). ``data``: the DataConfig (batch size, workers, decoder, balancing, augmentation, skip guard).
    ``train=True``: resampled, shuffled, augmented, ``len(loader)`` batches per epoch on every rank.
    ``train=False``: each video exactly once across ranks, deterministic sampling, no augmentation.
    Call ``set_epoch(epoch)`` before each training epoch for a new, reproducible draw.
    """

    def __init__(self, shards, clip, data=None, train=False, device="cpu", rank=None, world_size=None, seed=0):
        data = data or DataConfig()
        self.source = data.source
        if self.source == "videos" and not (clip is not None and clip.resolved):
            raise DfdError("a video loader needs a resolved clip spec (ClipSpec.resolve with the backbone's "
                           "data config)")
        self.clip, self.data, self.train, self.seed = clip, data, train, seed
        self.augment = data.augment if (train and data.augment.enabled and self.source == "videos") else None
        self.device = torch.device(device)
        default_rank, default_world = distributed_rank_and_world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        self.urls = expand_shards(shards)
        if data.verify_shards:  # each rank its share: every shard is checked once per job
            verify_shards(self.urls[self.rank::self.world_size])
        self.epoch = 0
        self.skipped = []
        self.io_faults = collections.Counter()  # storage retries (transient faults) by kind, from every worker
        self.skip_guard = SkipGuard(data.max_skip_fraction, data.skip_window) if train else None
        self.keep_probability = None
        self.dali = self._dali_loader() if self.source == "videos" else None
        if self.source == "videos" and self.dali is None:
            from dfdtrain.data.decode.decoders import build_decoder

            build_decoder(data.decoder)  # an unusable decoder fails here, in one line, not in every worker
        if train and self.dali is not None:
            self.batches_per_epoch = len(self.dali)
        elif train:
            samples = data.epoch_samples or count_samples(self.urls)
            self.batches_per_epoch = max(1, samples // (self.world_size * data.batch_size))
            if data.class_balance:
                counts = label_counts(self.urls)
                smallest = min(count for count in counts.values() if count) or 1
                self.keep_probability = {label: (smallest / count if count else 0.0) for label, count in counts.items()}

    def _dali_loader(self):
        """DALI reads, samples and decodes the shards itself (NVDEC on a GPU) when the decoder says so."""
        from dfdtrain.data.decode.decoders import dali_usable

        data = self.data
        if not (data.decoder == "dali" or (data.decoder == "auto" and dali_usable())):
            return None
        if self.train and data.class_balance:
            raise DfdError("data.class_balance is not available on the DALI path: use train.class_weights, or "
                           "data.decoder=pyav")
        if self.train and data.face_track == "random":
            raise DfdError("data.face_track=random is not available on the DALI path (it reads track 0): use "
                           "first, or data.decoder=pyav")
        from dfdtrain.data.decode.dali import DaliShardLoader

        canvas = data.dali_canvas
        # DALI's reader opens files: remote shards are copied into the bounded local cache first
        paths = storage.local_copies(self.urls, data.remote_cache_dir or storage.default_cache_dir(),
                                     int(data.remote_cache_gb * 1e9))
        return DaliShardLoader(paths, data.batch_size, self.clip.sampler, self.rank, self.world_size,
                               device="gpu" if self.device.type == "cuda" else "cpu", seed=self.seed,
                               train=self.train, resize=(canvas, canvas) if canvas else None,
                               shuffle_buffer=data.shuffle_buffer, face_canvas=self.clip.image_size)

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        if self.train:
            return self.batches_per_epoch
        raise TypeError("an evaluation loader has no fixed length per rank (ranks may get different counts)")

    def _pipeline(self):
        data = self.data
        if self.source == "videos":
            reader = ClipDecoder(self.clip, data.decoder, data.face_track)
        else:
            reader = EmbeddingReader()
        read_tars = ReadTars()
        if not self.train:
            return wds.DataPipeline(AssignedShards(self.urls, self.rank, self.world_size), read_tars, ParseMeta(),
                                    DecodeClips(reader), BatchClips(data.batch_size, partial=True))
        seed = f"{self.seed}:{self.epoch}:{self.rank}"
        stages = [ResampledShards(self.urls, self.seed, self.epoch, self.rank), read_tars,
                  Shuffle(data.shuffle_buffer, seed), ParseMeta()]
        if self.keep_probability:
            stages.append(BalanceClasses(self.keep_probability, seed))
        stages += [DecodeClips(reader, seed), BatchClips(data.batch_size, partial=False)]
        return wds.DataPipeline(*stages)

    def __iter__(self):
        generator = np.random.default_rng([self.seed, self.epoch, self.rank, 7]) if self.train else None
        for raw in (self._dali_batches() if self.dali is not None else self._worker_batches()):
            batch = {"mask": raw["mask"].to(self.device, non_blocking=True),
                     "label": raw["label"].to(self.device, non_blocking=True), "key": raw["key"], "meta": raw["meta"]}
            frames = raw["frames"].to(self.device, non_blocking=True)
            if self.source == "embeddings":  # frame features [B,T,D] for a head-only model
                yield {"features": frames, **batch}
            else:
                yield {"frames": model_input(frames, self.clip, self.augment, generator), **batch}

    def _worker_batches(self):
        """uint8 clip batches from the DataLoader workers (decode + crop on the CPU)."""
        data = self.data
        start_method = data.worker_start_method if data.num_workers and data.worker_start_method != "default" else None
        # its own generator: a DataLoader otherwise draws its workers' base seed from the global torch RNG at
        # every iter(), so a run resumed mid-epoch (RNG restored from the checkpoint, then iter() again) would
        # draw one number more than the uninterrupted run, and every dropout mask after it would differ
        generator = torch.Generator().manual_seed(_stable_seed(self.seed, self.epoch, self.rank, "workers"))
        loader = torch.utils.data.DataLoader(
            self._pipeline(), batch_size=None, num_workers=data.num_workers, worker_init_fn=_worker_init,
            multiprocessing_context=start_method, persistent_workers=False,
            pin_memory=self.device.type == "cuda", generator=generator)
        batches, produced = iter(loader), 0
        while not self.train or produced < self.batches_per_epoch:
            try:
                raw = next(batches)
            except StopIteration:
                return
            except DfdError:
                raise
            except Exception as error:  # a worker died or a stage outside ours failed: its last line says why
                lines = [line for line in str(error).splitlines() if line.strip()]
                raise LoaderError(f"data loader failed: {lines[-1].strip() if lines else type(error).__name__}") \
                    from None
            if "error" in raw:
                error = raw["error"]
                raise LoaderError(f"data loader stage {error['stage']!r} failed on sample {error['key']} of "
                                  f"{error['shard']}: {error['cause']}")
            self.skipped.extend(raw["skipped"])
            self.io_faults.update(raw.get("io_faults", {}))
            if self.skip_guard is not None:
                self.skip_guard.update(len(raw["key"]), raw["skipped"])
            if raw["key"]:
                produced += 1
                yield raw

    def _dali_batches(self):
        """uint8 clip batches from DALI (decoded on the GPU with NVDEC, or VP9 on the CPU), cropped on device."""
        for raw in self.dali:
            clips = []
            for position, meta in enumerate(raw["meta"]):
                count = int(raw["mask"][position].sum())
                if meta.get("store") == "faces":
                    meta = track_meta(meta, 0)  # DALI reads <key>.<ext>: track 0
                frames = raw["frames"][position, :count]
                source_size = (meta.get("width", frames.shape[2]), meta.get("height", frames.shape[1]))
                clips.append(clip_from_frames(frames, raw["indices"][position][:count].numpy(), meta, self.clip,
                                              source_size=source_size))
            yield {**raw, "frames": torch.stack([clip.frames for clip in clips]),
                   "meta": [batch_meta(clip) for clip in clips]}
