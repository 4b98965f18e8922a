"""Decode throughput: 16 sampled frames per video, GOP-skipping PyAV vs decoding everything (and DALI, torchcodec).

Each read is what a loader does per video in evaluation: the uniform sampler's 16 indices (eval mode, the
centre of 16 equal segments), decoded from the file's bytes in memory into uint8 RGB [16,H,W,3]. Methods:
  pyav        the ``pyav`` backend: decodes only from the keyframe before each run of wanted frames;
  sequential  the ``sequential`` backend: decodes every frame up to the last wanted one (the reference
              notebooks' way, and ``video.read_frames``);
  dali_cpu    the ``dali`` backend on the CPU (VP9 only there), when ``dfdtrain.data.decode.dali`` imports;
  dali_gpu    the ``dali`` backend on the GPU (NVDEC, ``mixed``; every codec), with ``--device cuda``/auto on a GPU;
  torchcodec  the ``torchcodec`` backend, when torchcodec imports.
Every method reads every video once untimed (warm-up), then ``--repeats`` times, the methods interleaved so
that load changes on the machine hit them alike; the median is reported. Ratios compare medians of one run.

    python benchmarks/decode.py [--repeats 5] [--quick] [--device auto] [--out benchmarks/results/decode_cpu.json]
"""

import argparse
import importlib
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av

from common import add_device_argument, add_fixtures_argument, emit, envelope, error_line, resolve_device
from dfdtrain.data.decode.decoders import build_decoder
from dfdtrain.data.decode.sampler import SamplerConfig, sample_indices
from dfdtrain.demo.synth import synthesize
from dfdtrain.data.decode.video import is_media_file, probe
from dfdtrain.core.errors import DfdError

DFDC_CLIP = "dfdc/dfdc_train_part_0/brtujopkby.mp4"
FFPP_CLIP = "ffpp/original_sequences/youtube/c40/videos/183.mp4"
NUM_FRAMES = 16
# Synthetic clips: keyframe every 12 frames (synth's default GOP), long enough for 16 samples to skip GOPs.
SYNTH_FULL = {"frames": 300, "width": 256, "height": 256, "fps": 25, "gop": 12}
SYNTH_QUICK = {"frames": 300, "width": 96, "height": 64, "fps": 25, "gop": 12}


# ---------------------------------------------------------------------------------------------------
# Videos


def keyframe_positions(data):
    """Presentation positions of the keyframes (pts order), from the packets alone."""
    with av.open(io.BytesIO(data)) as container:
        packets = [packet for packet in container.demux(video=0) if packet.size and not packet.is_discard]
    pts_order = sorted(packet.pts for packet in packets)
    return [pts_order.index(packet.pts) for packet in packets if packet.is_keyframe]


def describe(label, data, name):
    info = probe(data, name=name)
    indices, _ = sample_indices(info["frames"], SamplerConfig(mode="uniform", num_frames=NUM_FRAMES))
    return {
        "video": label,
        "codec": info["codec"],
        "width": info["width"],
        "height": info["height"],
        "frames": info["frames"],
        "keyframes": sorted(keyframe_positions(data)),
        "indices": [int(index) for index in indices],
    }


def make_synth_clips(folder, settings):
    """One real clip per codec (h264 mp4 with B-frames, vp9 webm); returns {codec: path}."""
    clips = {}
    for codec, extension in (("h264", "mp4"), ("vp9", "webm")):
        synthesize(Path(folder) / codec, count=2, codec=codec, seed=0, progress=False, **settings)
        clips[codec] = Path(folder) / codec / "real" / "p0000" / f"c0.{extension}"
    return clips


# ---------------------------------------------------------------------------------------------------
# Measuring


def build_methods(device):
    """{method: decoder} for the methods this machine can run, and {method: reason} for the others."""
    methods = {"pyav": build_decoder("pyav"), "sequential": build_decoder("sequential")}
    unavailable = {}
    try:
        importlib.import_module("dfdtrain.data.decode.dali")  # written separately; absent on older checkouts

        methods["dali_cpu"] = build_decoder("dali", device="cpu")
    except Exception as error:  # ImportError, DfdError (nvidia.dali missing), or a DALI start-up failure
        unavailable["dali_cpu"] = error_line(error)
    if device.type == "cuda":
        try:
            methods["dali_gpu"] = build_decoder("dali", device="gpu")
        except Exception as error:  # DfdError (nvidia.dali missing) or a DALI start-up failure
            unavailable["dali_gpu"] = error_line(error)
    else:
        unavailable["dali_gpu"] = "no GPU (run with --device cuda on a GPU machine)"
    try:
        methods["torchcodec"] = build_decoder("torchcodec")
    except DfdError as error:
        unavailable["torchcodec"] = str(error)
    return methods, unavailable


def measure(video, data, name, methods, repeats):
    """Median seconds per read for each method, plus frames/s, videos/s and, for pyav, the packets it fed."""
    indices = video["indices"]
    times = {method: [] for method in methods}
    pyav = methods["pyav"]
    for method, decoder in methods.items():  # warm-up: thread pools, DALI pipeline build, caches
        decoder.read(data, indices, name=name)
    packets_before = pyav.stats["packets_decoded"]
    for _ in range(repeats):
        for method, decoder in methods.items():
            started = time.perf_counter()
            frames = decoder.read(data, indices, name=name)
            times[method].append(time.perf_counter() - started)
            assert frames.shape[0] == len(indices)
    results = {}
    for method, seconds in times.items():
        median = statistics.median(seconds)
        results[method] = {
            "median_s": round(median, 5),
            "frames_per_s": round(len(indices) / median, 2),
            "videos_per_s": round(1 / median, 3),
            "times_s": [round(value, 5) for value in seconds],
        }
    results["pyav"]["packets_decoded_per_video"] = (pyav.stats["packets_decoded"] - packets_before) // repeats
    results["sequential"]["frames_decoded_per_video"] = max(indices) + 1
    ratios = {"pyav_speedup_over_sequential": round(results["sequential"]["median_s"] / results["pyav"]["median_s"], 3)}
    for other in ("dali_cpu", "dali_gpu", "torchcodec"):
        if other in results:
            ratios[f"{other}_speedup_over_pyav"] = round(results["pyav"]["median_s"] / results[other]["median_s"], 3)
    return {**video, "methods": results, "ratios": ratios}


def notes_for(comparisons):
    notes = [
        "pyav decodes from the keyframe at or before each run of wanted frames; frames between runs are skipped "
        "only when a whole GOP boundary lies between them, so the gain depends on the keyframe interval.",
        "With 250-frame GOPs (the DFDC and FF++ fixtures: keyframes at 0 and 250) 16 uniform frames need nearly "
        "every frame decoded anyway; only the frames between the last sample before 250 and the keyframe at 250 "
        "are skipped, so the honest ratio there is about 1.",
        "The synthetic clips have a keyframe every 12 frames: there 16 samples over the clip skip about half "
        "of the frames.",
        "The machine is shared: load_average_1m_at_start shows how busy it was; the methods are interleaved so "
        "that load hits them alike.",
    ]
    for comparison in comparisons:
        pyav = comparison["methods"]["pyav"]
        sequential = comparison["methods"]["sequential"]
        notes.append(f"{comparison['video']}: pyav fed {pyav['packets_decoded_per_video']} packets, sequential "
                     f"decoded {sequential['frames_decoded_per_video']} frames of {comparison['frames']}; "
                     f"speedup {comparison['ratios']['pyav_speedup_over_sequential']}x")
    return notes


def real_videos(folder, count):
    """``count`` real videos of ``folder`` (relative paths): the shared fixtures' DFDC and FF++ clips when it is
    that folder, else the first videos found in it (any folder of videos works)."""
    known = [FFPP_CLIP] if count == 1 else [DFDC_CLIP, FFPP_CLIP]
    if all((folder / clip).is_file() for clip in known):
        return known
    if not folder.is_dir():
        raise DfdError(f"{folder}: not a folder of videos (pass --fixtures DIR)")
    found = sorted(str(path.relative_to(folder)) for path in folder.rglob("*")
                   if path.is_file() and is_media_file(path.name))
    if not found:
        raise DfdError(f"{folder}: no video files in it (pass --fixtures DIR)")
    return found[:count]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_fixtures_argument(parser, help="a folder of real videos (default: the shared fixtures, their DFDC and FF++ "
                                       "clips; elsewhere the first videos found)")
    parser.add_argument("--repeats", type=int, default=5, help="timed reads per method and video (median)")
    parser.add_argument("--quick", action="store_true", help="1 repeat, no DFDC clip, smaller synthetic clips")
    parser.add_argument("--out", help="write the JSON result here too")
    add_device_argument(parser)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    repeats = 1 if args.quick else args.repeats
    fixtures = Path(args.fixtures)
    try:
        real_clips = real_videos(fixtures, 1 if args.quick else 2)
    except DfdError as error:
        print(f"decode benchmark: {error}", file=sys.stderr)
        return 2
    started = time.time()
    methods, unavailable = build_methods(device)
    synth_settings = SYNTH_QUICK if args.quick else SYNTH_FULL
    comparisons = []
    with tempfile.TemporaryDirectory() as folder:
        synth_clips = make_synth_clips(folder, synth_settings)
        videos = [(clip, fixtures / clip) for clip in real_clips]
        videos += [(f"synth-{codec} {synth_settings['width']}x{synth_settings['height']} gop "
                    f"{synth_settings['gop']}", path) for codec, path in synth_clips.items()]
        for label, path in videos:
            data = path.read_bytes()
            name = path.name
            video = describe(label, data, name)
            chosen = {method: decoder for method, decoder in methods.items()
                      if method != "dali_cpu" or video["codec"] in ("vp8", "vp9")}  # DALI's CPU codecs
            comparisons.append(measure(video, data, name, chosen, repeats))
    result = envelope(
        "decode", device,
        {"sampler": {"mode": "uniform", "num_frames": NUM_FRAMES, "train": False}, "repeats": repeats,
         "quick": args.quick, "synthetic_clips": synth_settings, "source": "file bytes in memory"},
        started, comparisons=comparisons, unavailable=unavailable, notes=notes_for(comparisons))
    return emit(result, args.out)


if __name__ == "__main__":
    sys.exit(main())
