"""NVIDIA DALI as a per-video decoder (``DaliDecoder``, the ``dali`` decoder backend), and what DALI's video
decoder does, which the shard pipeline (``dfdtrain.data.decode.dali_shards``) builds on too.

What DALI 2.4's ``fn.decoders.video`` (``fn.experimental.decoders.video`` is its deprecated alias) does, as
used here and checked on this version:
  * input: the encoded file as a 1-D uint8 sample (any container libavformat opens); output per sample
    ``[F, H, W, 3]`` uint8 RGB, layout FHWC; ``device="cpu"`` or ``"mixed"`` (NVDEC, output on the GPU).
  * ``frames=``: explicit presentation-order indices per sample, any order, duplicates allowed, as a
    constant or as a per-sample argument input (a CPU tensor made in the pipeline or fed from Python).
    It cannot be combined with ``start_frame`` / ``sequence_length`` / ``stride`` / ``end_frame``.
  * out-of-range indices: ``pad_mode="none"`` fails the whole pipeline ("Range of valid frame indices for
    this sample is [0, N)", after which the pipeline object is unusable and must be rebuilt);
    the default ``pad_mode="constant"`` returns ``fill_value`` (0) frames for them, even with ``frames=``
    (the docstring says pad_mode is "not relevant" there; the ``frames`` docstring and the behaviour say it is).
  * it outputs no frame count, length or padding mask: the mask has to come from what we know (the json).
  * CPU codecs in the 2.4 wheel: VP8, VP9, MJPEG only (H.264/HEVC/AV1/MPEG-4 need ``mixed``); an
    unsupported codec fails with a generic "Failed to create video decoder" (the codec is only logged).
  * colour: BT.601 limited-range YUV -> RGB with bilinear (centred) chroma upsampling; PyAV's
    ``to_ndarray("rgb24")`` (swscale default) uses the same matrix with nearest-neighbour chroma, so the two
    differ by ~1.5/255 on average and up to ~25/255 on sharp colour edges (tests/integration/test_dali.py measures it).
"""

import io
import os
import re
import threading

import numpy as np
import torch

from dfdtrain.core.errors import BadVideo, DfdError
from dfdtrain.data.decode.video import IMAGE_EXTENSIONS, read_source
from dfdtrain.data.decode.video import read_frames as read_frames_with_pyav

DALI_MISSING = "the dali decoder needs nvidia-dali: pip install 'dfdtrain[dali]'"
# What DALI 2.4's pip wheel decodes on the CPU (PyAV codec names); anything else needs device="mixed".
CPU_CODECS = ("vp8", "vp9", "mjpeg")
DEVICES = ("auto", "cpu", "gpu")


def import_dali():
    """Return (fn, types, pipeline_def) or raise the one-line install hint."""
    try:
        from nvidia.dali import fn, pipeline_def, types
    except Exception as error:  # a broken install fails with more than ImportError
        raise DfdError(f"{DALI_MISSING} ({type(error).__name__}: {error})") from None
    return fn, types, pipeline_def


def resolve_device(device):
    """'auto' -> 'gpu' when CUDA is available, else 'cpu'; 'gpu' without CUDA is an error."""
    if device not in DEVICES:
        raise DfdError(f"dali device must be one of {', '.join(DEVICES)}, not {device!r}")
    if device == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if device == "gpu" and not torch.cuda.is_available():
        raise DfdError("dali device 'gpu' needs CUDA, and torch sees no GPU (use device='cpu' with VP9 videos)")
    return device


def decoder_device(device):
    return "mixed" if device == "gpu" else "cpu"


def dali_error_line(error):
    """The operator's own message: the first line after DALI's 'encountered:' (else the first line)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if "encountered:" in lines:
        after = lines[lines.index("encountered:") + 1:]
        if after:
            return after[0]
    return lines[0] if lines else type(error).__name__


def _codec_name(data, name):
    """The video stream's codec as PyAV names it (reads the container header only)."""
    import av

    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise BadVideo(name, "undecodable", "no video stream")
            return container.streams.video[0].codec_context.name
    except av.FFmpegError as error:
        raise BadVideo(name, "undecodable", f"not a video container: {error}") from None


# ------------------------------------------------------------------------------------- per-video decoder
# Pipelines are keyed by process too: a DALI pipeline does not survive fork (DataLoader workers).
_DECODER_PIPELINES = {}
_DECODER_LOCK = threading.Lock()


def _build_decoder_pipeline(device, device_id, num_threads):
    fn, types, pipeline_def = import_dali()

    # Synchronous (not pipelined, no prefetch): each read feeds one video and runs once.
    @pipeline_def(batch_size=1, num_threads=num_threads, device_id=device_id, prefetch_queue_depth=1,
                  exec_pipelined=False, exec_async=False)
    def decoder_pipeline():
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        frame_indices = fn.external_source(name="frame_indices", dtype=types.INT32, ndim=1)
        # pad_mode="none": an index past the end fails instead of returning a black frame.
        return fn.decoders.video(encoded, frames=frame_indices, device=decoder_device(device), pad_mode="none")

    pipeline = decoder_pipeline()
    pipeline.build()
    return pipeline


class DaliDecoder:
    """Decode exactly the frames at given indices of one video with DALI (the ``dali`` decoder backend).

    ``DaliDecoder(device).read(source, indices)`` -> numpy uint8 [T,H,W,3] RGB, source a path or bytes,
    indices in presentation order, any order, duplicates allowed. ``device``: "gpu" decodes with NVDEC
    (``mixed``) on ``torch.cuda.current_device()`` (the frames are copied back to host memory: for frames
    that stay on the GPU use ``DaliShardLoader``); "cpu" decodes VP8/VP9/MJPEG only; "auto" picks "gpu" when
    CUDA is available. A still image (by its name's extension) is read with PIL, as one frame.
    Errors: BadVideo(name, "undecodable", ...) for a codec DALI cannot decode here or a broken file,
    BadVideo(name, "truncated", ...) for an index past the end, ValueError for no or negative indices.
    """

    name = "dali"

    def __init__(self, device="auto", device_id=None, num_threads=1):
        import_dali()
        self.device = resolve_device(device)
        if self.device == "gpu":
            self.device_id = torch.cuda.current_device() if device_id is None else int(device_id)
        else:
            self.device_id = None  # a CPU-only pipeline: no CUDA driver needed
        self.num_threads = num_threads

    def _pipeline_key(self):
        return os.getpid(), self.device, self.device_id, self.num_threads

    def read(self, source, indices, name=None):
        if name is None:
            name = "<bytes>" if isinstance(source, (bytes, bytearray, memoryview)) else str(source)
        indices = [int(index) for index in indices]
        if not indices:
            raise ValueError("read needs at least one frame index")
        if min(indices) < 0:
            raise ValueError(f"negative frame index {min(indices)}")
        if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
            return read_frames_with_pyav(source, indices, name=name)  # a still image: PIL, not a video decoder
        data = read_source(source, name)
        if not data:
            raise BadVideo(name, "zero-length")
        if self.device == "cpu":
            codec = _codec_name(data, name)
            if codec not in CPU_CODECS:
                raise BadVideo(name, "undecodable", f"DALI decodes only VP8/VP9/MJPEG on the CPU; this video is "
                                                    f"{codec} (decode it with DALI on a GPU, or with pyav)")
        return self._decode(data, indices, name)

    def _decode(self, data, indices, name):
        key = self._pipeline_key()
        with _DECODER_LOCK:
            pipeline = _DECODER_PIPELINES.get(key)
            if pipeline is None:
                pipeline = _DECODER_PIPELINES[key] = _build_decoder_pipeline(self.device, self.device_id,
                                                                             self.num_threads)
            pipeline.feed_input("encoded", [np.frombuffer(data, dtype=np.uint8)])
            pipeline.feed_input("frame_indices", [np.asarray(indices, dtype=np.int32)])
            try:
                (frames,) = pipeline.run()
            except RuntimeError as error:
                # After an operator error DALI marks the pipeline invalid: the next read builds a new one.
                del _DECODER_PIPELINES[key]
                raise _decode_failure(name, error) from None
            if self.device == "gpu":
                frames = frames.as_cpu()
            return np.array(frames.at(0))  # a copy: DALI reuses its output buffer on the next run


def _decode_failure(name, error):
    message = str(error)
    past_end = re.search(r"out-of-bounds frame index (\d+).*?valid frame indices for this sample is \[0, (\d+)\)",
                         message, re.S)
    if past_end:
        return BadVideo(name, "truncated", f"frame {past_end.group(1)} requested, video has {past_end.group(2)} frames")
    return BadVideo(name, "undecodable", f"DALI: {dali_error_line(error)}")
