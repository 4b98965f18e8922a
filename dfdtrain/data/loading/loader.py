"""Streaming loaders over the shards: shards -> sampled, decoded, cropped clips -> normalised batches.

A chain of small, picklable stages (``dfdtrain.data.loading.stages``; webdataset style; DataLoader workers may
start by fork, spawn or forkserver), run in DataLoader workers:
    shard urls -> tar samples -> shuffle -> parse meta -> (class balance) -> decode into clips -> batch
and, in the main process, to device -> (ELA) -> augment (training) -> normalise (``clips.model_input``).
The clip a sample becomes is the clip contract's (``dfdtrain.data.loading.clips``), the same as predict's and DALI's.

Training streams are resampled: every worker of every rank draws shards at random (seeded by seed, epoch,
rank and worker) forever, and an epoch is a fixed number of batches per rank. So every rank runs the same
number of steps whatever the shard sizes, even with fewer shards than ranks x workers: DDP cannot hang.
Mixed training sets (``data.train_sources``) interleave one such stream per source by weight
(``dfdtrain.data.loading.sources``: shards split over the (rank, worker) slots, per-source counts); a source's
``synthesis`` (sbi, vb) makes ``data.synthesis_fraction`` of its reals fake in the workers
(``dfdtrain.data.loading.synthetic``; shards without landmarks are refused when the loader is built).
Evaluation streams give each shard to exactly one (rank, worker) slot, so every video is scored exactly
once; ranks may get different counts and gather their results on rank 0 at the end. With
``data.val_synthesis`` each real video comes with its synthetic twin (``synthetic.Twins``).

Bad data: a sample that cannot be used (``BadVideo``, unreadable metadata) is skipped and recorded (key,
reason, shard) in ``loader.skipped``, never a crash or a hang. Anything else is a bug or a broken set-up,
not bad data: it stops the run with one line naming the stage, the sample and the cause (``LoaderError``).
In training the skip guard stops a stream whose recent samples are mostly skipped (``data.max_skip_fraction``
over ``data.skip_window`` samples): an endless stream of broken videos would otherwise never yield a batch.
"""

import collections

import numpy as np
import torch
import webdataset as wds

from dfdtrain.config import DataConfig
from dfdtrain.core.distributed import rank_and_world
from dfdtrain.core.errors import DfdError
from dfdtrain.data import storage
from dfdtrain.data.loading.clips import batch_meta, clip_from_frames, model_input, track_meta
from dfdtrain.data.loading.degrade import RandomDegradation, training_degradation
from dfdtrain.data.loading.stages import (AssignedShards, BalanceClasses, BatchClips, ClipDecoder, DecodeClips,
                                          EmbeddingReader, ParseMeta, ReadTars, ResampledShards, Shuffle, stable_seed)
from dfdtrain.data.loading.sources import (MixSources, SourceTally, epoch_length, keep_probabilities,
                                           training_sources)
from dfdtrain.data.loading.synthetic import Synthesiser, Twins, TwinsSource, check_landmarks
from dfdtrain.data.shards.catalog import count_samples, verify_shards
from dfdtrain.data.storage import expand_shards  # noqa: F401 (part of this module's API)


class LoaderError(DfdError):
    """A stage failed for a reason other than a bad video: the run stops (one line: stage, sample, cause)."""


class SkipGuardTripped(DfdError):
    """Too many of the recent training samples were skipped (``data.max_skip_fraction``)."""


def distributed_rank_and_world():
    """(rank, world size): the initialized process group's, else the launcher's (``rank_and_world``: torchrun's
    RANK and WORLD_SIZE, or an srun step's), else (0, 1)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    rank, world, _ = rank_and_world()
    return rank, world


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
    """Batches {frames float [B,T,3,S,S] normalised, mask bool [B,T], label float [B], synthetic bool [B] (CPU:
    made by a synthesis source, ``dfdtrain.data.loading.synthetic``), key, meta} on device
    (``data.source="embeddings"``: {features float [B,T,D], ...} from an embedding cache instead of frames).

    ``shards``: a glob, brace pattern or list of tars; for training, empty (None, "") with ``data.train_sources``
    set: those sources, mixed by weight (``dfdtrain.data.loading.sources``; per-source counts in
    ``source_tally``). ``clip``: the resolved ClipSpec (what each video becomes). ``data``: the DataConfig
    (batch size, workers, decoder, balancing, augmentation, skip guard).
    ``train=True``: resampled, shuffled, augmented, ``len(loader)`` batches per epoch on every rank; with
    ``data.augment.codec`` or ``perturb`` set, ``degrade`` defaults to ``degrade.training_degradation``'s.
    ``train=False``: each video exactly once across ranks, deterministic sampling, no augmentation.
    Call ``set_epoch(epoch)`` before each training epoch for a new, reproducible draw.
    """

    def __init__(self, shards, clip, data=None, train=False, device="cpu", rank=None, world_size=None, seed=0,
                 degrade=None):
        data = data or DataConfig()
        self.source = data.source
        if self.source == "videos" and not (clip is not None and clip.resolved):
            raise DfdError("a video loader needs a resolved clip spec (ClipSpec.resolve with the backbone's "
                           "data config)")
        self.clip, self.data, self.train, self.seed = clip, data, train, seed
        if degrade is None and train and self.source == "videos":  # data.augment.codec / perturb, in the workers
            degrade = training_degradation(data.augment)
        self.degrade = degrade  # decoded videos degraded in the workers (dfdtrain.data.loading.degrade)
        if degrade is not None and self.source != "videos":
            raise DfdError("a perturbation degrades videos: cached embeddings (data.source=embeddings) have none")
        self.augment = data.augment if (train and data.augment.enabled and self.source == "videos") else None
        self.device = torch.device(device)
        default_rank, default_world = distributed_rank_and_world()
        self.rank = default_rank if rank is None else rank
        self.world_size = default_world if world_size is None else world_size
        # mixed training sets: each source its own shard stream, drawn by weight
        self.sources = training_sources(data) if (train and not shards and data.train_sources) else None
        self.source_tally = SourceTally(self.sources) if self.sources else None
        # a synthesis blends video frames (the config refuses one with data.source=embeddings)
        self.synthesis = self.source == "videos" and bool(self.sources) and any(s.synthesis for s in self.sources)
        if self.synthesis:  # shards without landmarks: one line naming the shard option, before any training
            check_landmarks(self.sources)
        self.urls = (list(dict.fromkeys(url for source in self.sources for url in source.urls)) if self.sources
                     else expand_shards(shards))
        # evaluation with data.val_synthesis: each real video and its synthetic twin (synthetic.Twins)
        self.twins = data.val_synthesis if (not train and self.source == "videos") else ""
        if self.twins:
            check_landmarks([TwinsSource(self.twins, self.urls)])
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
            if self.sources:
                samples = epoch_length(self.sources, data)
            else:
                samples = data.epoch_samples or count_samples(self.urls)
            self.batches_per_epoch = max(1, samples // (self.world_size * data.batch_size))
            if data.class_balance and self.sources:  # within each source: balancing never shifts the shares
                for source in self.sources:
                    source.keep_probability = keep_probabilities(source.urls)
            elif data.class_balance:
                self.keep_probability = keep_probabilities(self.urls)

    def _dali_loader(self):
        """DALI reads, samples and decodes the shards itself (NVDEC on a GPU) when the decoder says so."""
        from dfdtrain.data.decode.decoders import dali_usable

        data = self.data
        needs_workers = ("data.train_sources" if self.sources else "data.val_synthesis" if self.twins
                         else "data.augment.codec / data.augment.perturb"
                         if isinstance(self.degrade, RandomDegradation)
                         else "a perturbation" if self.degrade is not None else None)
        if not (data.decoder == "dali" or (data.decoder == "auto" and dali_usable() and not needs_workers)):
            return None
        if needs_workers:
            raise DfdError(f"{needs_workers} is not available on the DALI path (it reads the shards itself): use "
                           "data.decoder=auto or pyav")
        if self.train and data.class_balance:
            raise DfdError("data.class_balance is not available on the DALI path: use train.class_weights, or "
                           "data.decoder=pyav")
        if self.train and data.face_track == "random":
            raise DfdError("data.face_track=random is not available on the DALI path (it reads track 0): use "
                           "first, or data.decoder=pyav")
        from dfdtrain.data.decode.dali_shards import DaliShardLoader

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
            synthesiser = (Synthesiser(self.seed, self.epoch, self.rank, data.synthesis_fraction)
                           if self.train and self.synthesis else Twins(self.twins, self.seed) if self.twins else None)
            reader = ClipDecoder(self.clip, data.decoder, data.face_track, synthesiser, self.degrade)
        else:
            reader = EmbeddingReader()
        read_tars = ReadTars()
        if not self.train:
            return wds.DataPipeline(AssignedShards(self.urls, self.rank, self.world_size), read_tars, ParseMeta(),
                                    DecodeClips(reader), BatchClips(data.batch_size, partial=True))
        seed = f"{self.seed}:{self.epoch}:{self.rank}"
        if self.sources:
            return wds.DataPipeline(MixSources(self.sources, self.seed, self.epoch, self.rank, self.world_size,
                                               data.shuffle_buffer), DecodeClips(reader, seed),
                                    BatchClips(data.batch_size, partial=False))
        stages = [ResampledShards(self.urls, self.seed, self.epoch, self.rank), read_tars,
                  Shuffle(data.shuffle_buffer, seed), ParseMeta()]
        if self.keep_probability:
            stages.append(BalanceClasses(self.keep_probability, seed))
        stages += [DecodeClips(reader, seed), BatchClips(data.batch_size, partial=False)]
        return wds.DataPipeline(*stages)

    def __iter__(self):
        generator = np.random.default_rng([self.seed, self.epoch, self.rank, 7]) if self.train else None
        for raw in (self._dali_batches() if self.dali is not None else self._worker_batches()):
            synthetic = raw.get("synthetic", torch.zeros(len(raw["key"]), dtype=torch.bool))  # DALI: none
            batch = {"mask": raw["mask"].to(self.device, non_blocking=True),
                     "label": raw["label"].to(self.device, non_blocking=True), "synthetic": synthetic,
                     "key": raw["key"], "meta": raw["meta"]}
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
        generator = torch.Generator().manual_seed(stable_seed(self.seed, self.epoch, self.rank, "workers"))
        loader = torch.utils.data.DataLoader(
            self._pipeline(), batch_size=None, num_workers=data.num_workers, worker_init_fn=_worker_init,
            multiprocessing_context=start_method, persistent_workers=False,
            pin_memory=self.device.type == "cuda", generator=generator)
        batches, produced = iter(loader), 0
        if self.source_tally is not None:
            self.source_tally.reset()  # this epoch's (a mid-epoch resume replays the trained batches: counted too)
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
                if self.source_tally is not None:
                    self.source_tally.add(raw["meta"])
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
