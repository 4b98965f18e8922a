"""The DALI shard pipeline: ``fn.readers.webdataset`` reads our tars through their DALI indexes, our sampler
picks each video's frames, ``fn.decoders.video`` decodes them (NVDEC on a GPU), and ``DaliShardLoader`` hands
one rank's batches to torch without a copy through the host. Before it builds a pipeline it refuses, in one
line, shards DALI would fail on mid-epoch (a sample without a video or a json, a codec the CPU cannot decode,
frames of several sizes without a resize). What DALI's decoder does and does not do: ``dfdtrain.data.decode.dali``.

Choice for the shard pipeline: because ``frames=`` takes per-sample indices computed in the pipeline, each
video's indices come from our own sampler (``sampler.sample_indices``, the same contract as every other
backend) run in a ``fn.python_function`` on the sample's json (its ``frames`` count), with a per-sample seed
drawn by DALI's seeded ``fn.random.uniform`` in training (deterministic centres in evaluation). The
``start_frame``/``sequence_length``/``stride`` route would give only one clip from one start and cannot cover
the whole video uniformly, which is what the reference projects sampled.
"""

import json
import math
import os
import tarfile

import numpy as np
import torch

from dfdtrain.core.errors import DfdError
from dfdtrain.data.decode.dali import CPU_CODECS, dali_error_line, decoder_device, import_dali, resolve_device
from dfdtrain.data.decode.dali_tar_index import dali_index_path
from dfdtrain.data.decode.sampler import sample_indices
from dfdtrain.data.decode.video import VIDEO_EXTENSIONS

# The member extensions our shards can hold a video under (``<key>.<ext>``, lower case, no dot).
SHARD_VIDEO_EXTENSIONS = tuple(extension.lstrip(".") for extension in VIDEO_EXTENSIONS)


def is_empty_tar(path):
    with tarfile.open(path) as tar:
        return tar.next() is None


def read_shard_index(shard_path):
    """The DALI index beside a tar as [[(extension, offset, size, member name), ...] per sample]."""
    index_path = dali_index_path(shard_path)
    try:
        with open(index_path, "rb") as handle:
            lines = os.fsdecode(handle.read()).splitlines()
    except OSError as error:
        raise DfdError(f"{index_path}: DALI index of {shard_path} is unreadable ({error.strerror or error}); "
                       f"re-run dfdtrain shard") from None
    samples = []
    for line in lines[1:]:
        fields = line.split()
        samples.append([(fields[i], int(fields[i + 1]), int(fields[i + 2]), fields[i + 3])
                        for i in range(0, len(fields), 4)])
    return samples


def check_shard_samples(shard_paths, video_extensions):
    """Count the samples; refuse one without a video member or a json (DALI's reader would fail mid-epoch).

    A still image (``<key>.jpg``, which a folder dataset may hold) is not a video for DALI's video decoder.
    """
    total = 0
    for shard_path in shard_paths:
        for components in read_shard_index(shard_path):
            extensions = {extension for extension, _, _, _ in components}
            if "json" not in extensions or not extensions & set(video_extensions):
                raise DfdError(f"{shard_path}: sample {components[0][3]} has members {', '.join(sorted(extensions))}; "
                               f"the dali loader needs a video ({', '.join(video_extensions)}) and a json")
            total += 1
    return total


def sample_metas(shard_paths):
    """(shard, member name, json) of every sample, read through the DALI index (only the json members)."""
    for shard_path in shard_paths:
        with open(shard_path, "rb") as handle:
            for components in read_shard_index(shard_path):
                for extension, offset, size, member in components:
                    if extension == "json":
                        handle.seek(offset)
                        yield shard_path, member, json.loads(handle.read(size))


def check_videos(shard_paths, cpu, resize, face_canvas=None):
    """Refuse shards DALI would fail on mid-epoch: on the CPU, a codec other than VP8/VP9/MJPEG; without a
    decode-time resize (``data.dali_canvas``), videos of more than one size (a batch is one dense tensor).
    Returns the resize to use: ``resize``, or for face clips of several sizes (each track is stored at its
    native size) a ``face_canvas`` square: the clip is the face crop, so it only needs the model's size."""
    sizes, faces_only = {}, True
    for shard_path, member, meta in sample_metas(shard_paths):
        codec = meta.get("codec")
        if cpu and codec not in CPU_CODECS:
            raise DfdError(f"{shard_path}: {member} is a {codec} video; DALI decodes only VP8/VP9/MJPEG "
                           f"on the CPU (use device='gpu', or the pyav loader)")
        sizes.setdefault((meta.get("width"), meta.get("height")), member)
        faces_only = faces_only and meta.get("store") == "faces"
    if resize is not None or len(sizes) <= 1:
        return resize
    if faces_only and face_canvas:
        return (face_canvas, face_canvas)
    listed = ", ".join(f"{width}x{height} ({member})" for (width, height), member in list(sizes.items())[:3])
    raise DfdError(f"these shards hold videos of {len(sizes)} sizes ({listed}{', ...' if len(sizes) > 3 else ''}); "
                   "the DALI loader batches frames of one size: set data.dali_canvas (a square side the "
                   "frames are resized to at decode time, e.g. 512), or use data.decoder=pyav")


class _SampleFrameIndices:
    """The ``fn.python_function`` body: one sample's json (+ seed in training) -> (indices int32 [T], mask [T]).

    Positions past the video's end get the index ``frames`` (one past the last frame), which the decoder's
    default ``pad_mode="constant"`` turns into all-zero frames, so padding costs no decoding.
    """

    def __init__(self, sampler):
        self.sampler = sampler

    def __call__(self, meta_bytes, seed=None):
        frame_count = int(json.loads(meta_bytes.tobytes())["frames"])
        rng = None if seed is None else np.random.default_rng(int(seed))
        indices, mask = sample_indices(frame_count, self.sampler, rng)
        padded = np.full(self.sampler.num_frames, max(frame_count, 0), dtype=np.int32)
        padded[: len(indices)] = indices
        return padded, mask


def build_dali_shard_pipeline(shard_paths, batch_size, sampler, shard_id=0, num_shards=1, device="cpu", seed=0,
                              train=True, random_shuffle=None, exts=SHARD_VIDEO_EXTENSIONS, resize=None,
                              num_threads=None, shuffle_buffer=64, device_id=None):
    """A built DALI pipeline that reads our shards and decodes ``sampler.num_frames`` sampled frames per video.

    Outputs per batch: frames uint8 [B,T,H,W,3] (GPU for device "gpu"), frame indices int32 [B,T] (those
    at or past a video's end are padding), mask bool [B,T] (True = a real frame; padding frames are zeros)
    and the json member as uint8 bytes [B, n]. ``sampler``: a SamplerConfig (the clip spec's).
    ``resize=(H, W)`` resizes every frame in the pipeline (needed when a batch mixes resolutions).

    Face-clip shards (``shard --store faces``) need nothing special: ``<key>.mp4``/``<key>.webm`` is track 0's
    short-GOP clip and the json's ``frames`` its frame count, so frames are sampled in clip time and
    ``fn.decoders.video`` decodes only the GOPs holding them; further tracks (``<key>.track1.mp4``...) have
    other extensions, which the reader does not ask for.

    Reader: ``fn.readers.webdataset`` over the tars with their ``.idx`` files, one sample = ``<key>.<video
    ext>`` + ``<key>.json``; DALI splits the sample list (tars in the given order) into ``num_shards``
    contiguous parts, part i = samples [i*N//S, (i+1)*N//S).
      train: the reader is an endless stream: no padding (a batch runs on into the next epoch),
             ``shuffle_after_epoch`` reorders the tars each epoch with the same seed on every rank (so the
             ranks' parts stay disjoint within an epoch), plus a ``shuffle_buffer``-sample shuffle buffer
             (small: each buffered sample holds a whole encoded video).
      eval:  no shuffling, ``stick_to_shard`` and ``pad_last_batch``: DALI repeats the part's last sample
             to fill its last batch and pads every part to the same number of batches, ceil(ceil(N/S)/B)
             (so a shorter part can get a whole batch of repeats); each pass starts at the part's first sample.
    """
    fn, types, pipeline_def = import_dali()
    device = resolve_device(device)
    if device == "gpu" and device_id is None:
        device_id = torch.cuda.current_device()
    # a tar whose every video was skipped at shard time has no samples and no DALI index
    shard_paths = [os.fspath(path) for path in shard_paths if not is_empty_tar(path)]
    if not shard_paths:
        raise DfdError("no samples in the shards given to the DALI pipeline (every video was skipped at shard time)")
    if random_shuffle is None:
        random_shuffle = train
    if num_threads is None:
        num_threads = max(1, min(8, len(os.sched_getaffinity(0))))
    samples_per_shard = max(1, sum(len(read_shard_index(path)) for path in shard_paths) // num_shards)
    reader_options = {"random_shuffle": random_shuffle, "pad_last_batch": not train, "stick_to_shard": not train}
    if random_shuffle:
        reader_options["initial_fill"] = max(1, min(shuffle_buffer, samples_per_shard))
    if train and random_shuffle:
        reader_options.update(shuffle_after_epoch=True, shuffle_after_epoch_seed=seed)
    sample_frame_indices = _SampleFrameIndices(sampler)

    @pipeline_def(batch_size=batch_size, num_threads=num_threads, device_id=device_id if device == "gpu" else None,
                  seed=(seed * 1_000_003 + shard_id) % 2**31)
    def shard_pipeline():
        video, meta = fn.readers.webdataset(
            paths=shard_paths, index_paths=[dali_index_path(path) for path in shard_paths],
            ext=[";".join(exts), "json"], missing_component_behavior="error", shard_id=shard_id,
            num_shards=num_shards, name="reader", **reader_options)
        if train:
            sample_seed = fn.random.uniform(range=[0, 2**31 - 1], dtype=types.INT64)
            frame_indices, mask = fn.python_function(meta, sample_seed, function=sample_frame_indices, num_outputs=2)
        else:
            frame_indices, mask = fn.python_function(meta, function=sample_frame_indices, num_outputs=2)
        frames = fn.decoders.video(video, frames=frame_indices, device=decoder_device(device), pad_mode="constant")
        if resize is not None:
            frames = fn.resize(frames, size=[int(resize[0]), int(resize[1])])
        return frames, frame_indices, mask, meta

    pipeline = shard_pipeline()
    pipeline.build()
    return pipeline


# --------------------------------------------------------------------------------------------- the loader
def _to_torch(tensor_list, device_id):
    """A DALI batch as one torch tensor (copied device-to-device on the GPU, never through the host)."""
    from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

    try:
        dense = tensor_list.as_tensor()
    except RuntimeError:
        shapes = sorted({tuple(shape) for shape in tensor_list.shape()})
        raise DfdError(f"videos in one batch have different sizes {shapes[:3]}; pass resize=(H, W)") from None
    if device_id is None:
        out = torch.empty(dense.shape(), dtype=to_torch_type[dense.dtype])
        return feed_ndarray(dense, out)
    out = torch.empty(dense.shape(), dtype=to_torch_type[dense.dtype], device=torch.device("cuda", device_id))
    # The copy runs on torch's current stream, so later torch work on that stream sees the data.
    return feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream(out.device))


class DaliShardLoader:
    """One rank's batches of our shards through DALI: read, sample and decode in one pipeline.

    ``DaliShardLoader(shard_paths, batch_size, sampler, rank, world_size, device, seed, train)`` yields
    ``{"frames": uint8 [B,T,H,W,3] (on the GPU for device "gpu", else CPU), "mask": bool [B,T],
    "indices": int64 [B,T] (frame numbers; padding positions hold the video's frame count), "label": float32 [B],
    "key": [str], "meta": [dict]}`` (``meta`` is the sample's json: the manifest row, probe and faces);
    mask, indices and label are CPU tensors. All ranks must pass the same shard_paths in the same order.

    Sharding: DALI gives rank r the samples [r*N//W, (r+1)*N//W) of the N samples (equal counts +-1).
    ``len(loader)``:
      train: N//W//B batches (at least 1) on every rank, every batch full. The reader never stops (no
             ``pad_last_batch``: batches run on across DALI epochs, and the tars are reshuffled each DALI
             epoch), so an epoch is that fixed number of batches and over epochs every sample is seen about
             equally often; equal lengths keep DDP's collectives in step.
      eval:  ceil(n_r/B) batches for this rank's n_r samples: every sample exactly once across the ranks.
             DALI pads (``pad_last_batch``) the last batch with repeats of the part's last sample and every
             part to ceil(ceil(N/W)/B) batches; the repeats are dropped here (the last batch can be smaller
             than B) and whole batches of repeats are run but not yielded. Lengths can differ by one batch
             between ranks, so evaluation must not run a collective per batch: gather results at the end.
             Every pass yields the same samples in the same order, even after a pass was left early.
    """

    def __init__(self, shard_paths, batch_size, sampler, rank=0, world_size=1, device="auto", seed=0, train=True,
                 resize=None, num_threads=None, shuffle_buffer=64, face_canvas=None):
        import_dali()
        self.device = resolve_device(device)
        self.shard_paths = [os.fspath(path) for path in shard_paths]
        if not self.shard_paths:
            raise DfdError("the dali loader needs at least one shard")
        for path in self.shard_paths:
            if not os.path.isfile(path):
                raise DfdError(f"{path}: shard not found")
        if not 0 <= rank < world_size:
            raise DfdError(f"rank {rank} is outside world size {world_size}")
        if batch_size < 1:
            raise DfdError(f"batch size must be positive, not {batch_size}")
        self.total_samples = check_shard_samples(self.shard_paths, SHARD_VIDEO_EXTENSIONS)
        resize = check_videos(self.shard_paths, cpu=self.device == "cpu", resize=resize, face_canvas=face_canvas)
        self.batch_size, self.train = batch_size, train
        if self.total_samples < world_size:
            raise DfdError(f"{self.total_samples} samples cannot be split over {world_size} ranks")
        # DALI's split of the sample list (see the docstring).
        self.samples = (rank + 1) * self.total_samples // world_size - rank * self.total_samples // world_size
        if train:
            self.batches = max(1, self.total_samples // world_size // batch_size)
        else:
            self.batches = math.ceil(self.samples / batch_size)
        # Pipeline runs in one eval pass: DALI pads every rank's part to this many batches.
        self.runs_per_pass = math.ceil(math.ceil(self.total_samples / world_size) / batch_size)
        self.device_id = torch.cuda.current_device() if self.device == "gpu" else None
        self.pipeline = build_dali_shard_pipeline(
            self.shard_paths, batch_size, sampler, shard_id=rank, num_shards=world_size, device=self.device,
            seed=seed, train=train, resize=resize, num_threads=num_threads, shuffle_buffer=shuffle_buffer,
            device_id=self.device_id)
        reader_meta = self.pipeline.reader_meta("reader")
        if reader_meta["epoch_size"] != self.total_samples:  # the .idx files and DALI disagree: stale index
            raise DfdError(f"DALI counts {reader_meta['epoch_size']} samples, the shard indexes "
                           f"{self.total_samples}; re-run dfdtrain shard")
        self.runs = 0

    def __len__(self):
        return self.batches

    def _run(self):
        try:
            outputs = self.pipeline.run()
        except RuntimeError as error:
            raise DfdError(f"DALI shard pipeline failed: {dali_error_line(error)}") from None
        self.runs += 1
        return outputs

    def __iter__(self):
        if not self.train:
            # Finish the previous pass (its trailing batches of repeats, or what a caller left early),
            # so this pass starts at the first sample of the rank's part.
            while self.runs % self.runs_per_pass:
                self._run()
        for number in range(self.batches):
            outputs = self._run()
            keep = self.batch_size if self.train else min(self.batch_size, self.samples - number * self.batch_size)
            yield self._batch(outputs, keep)

    def _batch(self, outputs, keep):
        frames, frame_indices, mask, meta = outputs
        frames = _to_torch(frames, self.device_id)[:keep]
        frame_indices = torch.from_numpy(np.array(frame_indices.as_tensor())[:keep].astype(np.int64))
        mask = torch.from_numpy(np.array(mask.as_tensor())[:keep])
        metas = [json.loads(np.array(meta.at(i)).tobytes()) for i in range(keep)]
        return {
            "frames": frames,
            "mask": mask,
            "indices": frame_indices,
            "label": torch.tensor([float(item["label"]) for item in metas], dtype=torch.float32),
            "key": [item["key"] for item in metas],
            "meta": metas,
        }

    def close(self):
        """Release the pipeline (its threads and buffers) now rather than at garbage collection."""
        self.pipeline = None
