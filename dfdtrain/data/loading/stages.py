"""The stages of a streaming loader's pipeline, run in the DataLoader workers (webdataset style: a source stage
is called with no argument, every other one with the previous stage's iterator; each is a small picklable
class holding its settings, so the pipeline survives fork, spawn and forkserver workers):

    ResampledShards / AssignedShards -> ReadTars -> Shuffle -> ParseMeta -> (BalanceClasses)
        -> DecodeClips (ClipDecoder or EmbeddingReader) -> BatchClips
    (data.train_sources: ``sources.MixSources``, one such read/shuffle/parse/balance chain per source mixed by
    weight, -> DecodeClips (with a synthesis source: ``synthetic.Synthesiser`` after each clip) -> BatchClips)

A sample that cannot be used becomes a skip record (``{"skip": {key, reason, detail, shard}}``) and anything
else that fails an error record (``{"error": {stage, key, shard, cause}}``, after which the stream ends); both
ride along to the main process, where ``dfdtrain.data.loading.loader.VideoLoader`` records or raises them.
Random generators are made inside the worker, per worker, from the run's seed (``stable_seed``), so a run's
sample order is the same every time it is run or resumed.
"""

import hashlib
import io
import json
import random
import tarfile

import numpy as np
import torch
import webdataset as wds

from dfdtrain.core.errors import BadVideo, one_line
from dfdtrain.data import storage
from dfdtrain.data.loading.clips import batch_meta, make_clip, video_member


def _worker():
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info else (0, 1)


def worker_slot(rank, world_size):
    """(worker, slot, slots): this DataLoader worker, and its place among every (rank, worker) of the job."""
    worker, workers = _worker()
    return worker, rank * workers + worker, world_size * workers


def source_fields(sample):
    """A mixed training stream's ``source`` and ``synthesis`` (``dfdtrain.data.loading.sources``), for the batch
    meta; nothing for a sample of a single shard set."""
    return {name: sample[name] for name in ("source", "synthesis") if name in sample}


def stable_seed(*parts):
    """A 64-bit seed from ``parts``, the same in every run and process (unlike Python's str hash)."""
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:16], 16)


def _worker_seed(seed, purpose):
    """A seed unique to (seed, this worker, purpose)."""
    worker, _ = _worker()
    return stable_seed(seed, worker, purpose)


def passes_through(sample):
    """A skip or error record: every stage hands it on untouched."""
    return "skip" in sample or "error" in sample


def skip_record(sample, reason, detail=""):
    return {"skip": {"key": sample.get("__key__"), "reason": reason, "detail": detail,
                     "shard": sample.get("__url__")}}


# ---------------------------------------------------------------------------------------------- stages


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
        _, slot, slots = worker_slot(self.rank, self.world_size)
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
            yield {"error": {"stage": "read", "key": sample and sample["__key__"], "shard": storage.redact(url),
                             "cause": str(error)}}
            return
        except (tarfile.TarError, OSError, EOFError) as error:
            # where it broke: the header of the member being read, or of the next one
            offset = reading.offset if reading is not None else (tar.offset if tar is not None else 0)
            if sample is not None:
                yield sample  # what was read of it: a sample missing its json or video is skipped downstream
            cause = one_line(f"{type(error).__name__}: {error}")
            yield {"skip": {"key": None, "reason": "unreadable-shard", "shard": url, "offset": offset,
                            "detail": f"tar read error at byte {offset}: {cause}; the rest of the shard "
                                      "was not read"}}
            return
        if sample is not None:
            yield sample


def shuffled(samples, size, initial, rng):
    """``samples`` in the order a shuffle buffer of ``size`` gives (``rng``: a ``random.Random``): the buffer
    fills to ``initial`` samples (at most ``size``), taking up to two at a time, before the first is handed
    on; each sample handed on is a random one of the buffer, whose place the buffer's last one takes; once
    the input ends, the buffer empties the same way. The same algorithm, and so the same order for a given
    seed, as webdataset 1.0's shuffle stage: the order a run's seed gives must not change with a library."""
    samples = iter(samples)
    initial = min(initial, size)
    buffer = []
    for sample in samples:
        buffer.append(sample)
        if len(buffer) < size:
            try:
                buffer.append(next(samples))
            except StopIteration:
                pass
        if len(buffer) >= initial:
            yield _pick(buffer, rng)
    while buffer:
        yield _pick(buffer, rng)


def _pick(buffer, rng):
    """Remove a random sample from ``buffer`` and return it (the last one takes its place)."""
    position = rng.randint(0, len(buffer) - 1)
    sample = buffer[position]
    buffer[position] = buffer[-1]
    buffer.pop()
    return sample


class Shuffle:
    """A shuffle buffer of ``size`` samples (each holds a whole encoded video: keep it small)."""

    def __init__(self, size, seed):
        self.size, self.seed = size, seed

    def __call__(self, samples):
        rng = random.Random(_worker_seed(self.seed, "shuffle"))
        return shuffled(samples, self.size, min(self.size, 16), rng)


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

    def __init__(self, spec, decoder="pyav", face_track="best", synthesiser=None, degrade=None):
        self.spec, self.decoder_name, self.face_track = spec, decoder, face_track
        self.degrade = degrade  # a robustness perturbation or augmentation: ``dfdtrain.data.loading.degrade``
        # training with a synthesis source: ``synthetic.Synthesiser``; evaluation's twins: ``synthetic.Twins``
        self.synthesiser = synthesiser
        self.decoder = None  # built in the worker on first use (a DALI pipeline can neither be pickled nor forked)

    def __getstate__(self):
        return {**self.__dict__, "decoder": None}

    def __call__(self, sample, rng):
        if self.decoder is None:
            from dfdtrain.data.decode.decoders import build_decoder

            self.decoder = build_decoder(self.decoder_name)
        meta, field = video_member(sample, self.face_track, rng)
        key, data, degrade = sample["__key__"], sample[field], self.degrade
        if degrade is not None:
            data = degrade.source(key, data, rng)
        clip = make_clip(self.decoder, data, meta, self.spec, rng, name=f"{key}.{field}",
                         degrade_frames=None if degrade is None else lambda frames: degrade.frames(key, frames, rng))
        item = {"frames": clip.frames, "mask": clip.mask, "label": float(meta["label"]), "key": key,
                "meta": {**batch_meta(clip), "shard": sample.get("__url__"),  # for the evaluation's accounting
                         **source_fields(sample)}}
        return self.synthesiser(sample, clip, item) if self.synthesiser is not None else item


class EmbeddingReader:
    """A cached sample (``dfdtrain embed``): ``<key>.npy`` frame features [T,D] + json with the mask."""

    def __call__(self, sample, rng):
        meta = sample["meta"]
        if "npy" not in sample:
            raise BadVideo(sample["__key__"], "unreadable", "sample has no .npy features")
        features = np.load(io.BytesIO(sample["npy"]), allow_pickle=False).astype(np.float32)
        return {"frames": torch.from_numpy(features), "mask": torch.tensor(meta["mask"], dtype=torch.bool),
                "label": float(meta["label"]), "key": sample["__key__"],
                "meta": {**meta, "shard": sample.get("__url__"), **source_fields(sample)}}


class DecodeClips:
    """Samples -> clips with ``reader`` (ClipDecoder or EmbeddingReader: an item, or a list of them). A BadVideo
    becomes a skip record; any other exception an error record, after which the stream ends (the main process
    stops the run)."""

    def __init__(self, reader, seed=None):
        self.reader, self.seed = reader, seed  # seed None: deterministic sampling (evaluation)

    def __call__(self, samples):
        rng = None if self.seed is None else np.random.default_rng(_worker_seed(self.seed, "frames"))
        for sample in samples:
            if passes_through(sample):
                yield sample
                continue
            try:
                items = self.reader(sample, rng)
            except BadVideo as error:
                yield skip_record(sample, error.reason, error.detail)
                continue
            except Exception as error:  # not bad data: a bug or a broken set-up, which no skip would fix
                yield {"error": {"stage": "decode", "key": sample.get("__key__"), "shard": sample.get("__url__"),
                                 "cause": one_line(f"{type(error).__name__}: {error}")}}
                return
            yield from (items if isinstance(items, list) else [items])  # a real clip and its synthetic twin


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
                "label": torch.zeros(0), "synthetic": torch.zeros(0, dtype=torch.bool), "key": [], "meta": [],
                "skipped": skipped, "io_faults": io_faults}
    return {"frames": torch.stack([clip["frames"] for clip in clips]),
            "mask": torch.stack([clip["mask"] for clip in clips]),
            "label": torch.tensor([clip["label"] for clip in clips], dtype=torch.float32),
            "synthetic": torch.tensor([clip.get("synthetic", False) for clip in clips], dtype=torch.bool),
            "key": [clip["key"] for clip in clips], "meta": [clip["meta"] for clip in clips], "skipped": skipped,
            "io_faults": io_faults}
