"""The face-clip store's settings: ``FaceClipOptions`` (clip size, codec, quality, GOP, pixel format, the no-face
and doubtful-face policies, the track options, the landmark model), the codecs and their defaults, and the
encoder options and json record they make. Light to import: the CLI reads its defaults from here.
"""

import dataclasses

from dfdtrain.data.faces.tracks import TrackOptions

# codec -> (PyAV encoder, tar member extension, container format)
CLIP_CODECS = {"h264": ("libx264", "mp4", "mp4"), "vp9": ("libvpx-vp9", "webm", "webm")}
# Measured on the real fixtures at the default settings (benchmarks/face_store.py): mean error vs the source crops
# 1.13/255 on DFDC (worst 1.37), 1.76 on FF++ c40 (3 of 15 over 2, worst 2.41: grainy c40 599).
DEFAULT_CRF = {"h264": 18, "vp9": 26}
PIXEL_FORMATS = ("yuv420p", "yuv444p")
NO_FACE_POLICIES = ("keep", "skip")


@dataclasses.dataclass
class FaceClipOptions:
    # largest clip side in pixels (DeepfakeBench's 256: models see 224-299 px); a smaller face window is stored at
    # its own size (no upscaling). For larger inputs (efficientnet_b7_lstm: 380) shard with --face-size 384
    size: int = 256
    codec: str = "h264"  # h264 (NVDEC/DALI on a GPU, PyAV on a CPU) | vp9 (also DALI on a CPU)
    crf: int = None  # quality, lower = better (None: the codec's default, DEFAULT_CRF; 0 = lossless)
    gop: int = 4  # keyframe every gop frames (1 = all-intra)
    pix_fmt: str = "yuv420p"  # yuv420p (what NVDEC decodes) | yuv444p (full chroma; CPU decoders only)
    preset: str = "medium"  # libx264 speed/size trade-off (vp9: speed is fixed, see encoder_options)
    no_face: str = "keep"  # keep (centre-square clip, marked no_face) | skip (named in index.json)
    # None: a video whose best face track covers less than half its frames or fails a sanity check is kept and
    # marked doubtful (listed in index.json); F: such a video, with F in place of the half, is skipped instead
    min_track_coverage: float = None
    fidelity_frames: int = 32  # frames per clip compared with the crops to measure PSNR / mean error
    # a landmark model (``landmarks.LANDMARK_MODELS``: dlib68) run on every stored frame of each kept track, its
    # points stored in the track's json entry (clip pixels); None: no landmarks
    landmarks: str = None
    tracks: TrackOptions = dataclasses.field(default_factory=TrackOptions)

    def __post_init__(self):
        if isinstance(self.tracks, dict):
            self.tracks = TrackOptions(**self.tracks)
        if self.codec not in CLIP_CODECS:
            raise ValueError(f"face clip codec must be one of {', '.join(CLIP_CODECS)}, not {self.codec!r}")
        if self.pix_fmt not in PIXEL_FORMATS:
            raise ValueError(f"face clip pixel format must be one of {', '.join(PIXEL_FORMATS)}, not {self.pix_fmt!r}")
        if self.no_face not in NO_FACE_POLICIES:
            raise ValueError(f"no_face must be one of {', '.join(NO_FACE_POLICIES)}, not {self.no_face!r}")
        if self.crf is None:
            self.crf = DEFAULT_CRF[self.codec]
        highest_crf = 51 if self.codec == "h264" else 63
        if not 0 <= self.crf <= highest_crf:
            raise ValueError(f"{self.codec} crf must be in 0..{highest_crf}, not {self.crf}")
        if self.min_track_coverage is not None and not 0 <= self.min_track_coverage <= 1:
            raise ValueError(f"min_track_coverage must be in [0, 1], not {self.min_track_coverage}")
        if self.landmarks is not None:
            from dfdtrain.data.faces.landmarks import LANDMARK_MODELS

            if self.landmarks not in LANDMARK_MODELS:
                raise ValueError(LANDMARK_MODELS.unknown_name_message(self.landmarks))
        if self.size < 16 or self.size % 2 or self.gop < 1 or self.fidelity_frames < 1:
            raise ValueError("face clip size must be even and >= 16; gop and fidelity_frames >= 1")


def encoder_options(options):
    """The encoder's own options for these settings (recorded in each sample's json)."""
    gop = str(options.gop)
    if options.codec == "h264":
        # bf=0: no B-frames, decode order = display order; scenecut=0 + keyint_min: a keyframe exactly every
        # gop frames; closed GOPs, so a decoder can start at any keyframe. threads=1: one process per core at
        # shard time, and the bytes do not depend on the thread count. tune=fastdecode (CAVLC, no deblocking,
        # no weighted prediction): on the fixtures ~15% more bytes for 15-25% faster sampled decoding.
        return {"crf": str(options.crf), "preset": options.preset, "tune": "fastdecode", "g": gop,
                "keyint_min": gop, "bf": "0", "threads": "1", "x264-params": "scenecut=0:open-gop=0"}
    # libvpx-vp9: constant quality (b=0 + crf), no alt-ref frames (lag 0: one shown frame per packet);
    # speed 4 ("good" deadline) is the usual quality/speed middle.
    vp9 = {"crf": str(options.crf), "b": "0", "g": gop, "keyint_min": gop, "deadline": "good", "cpu-used": "4",
           "lag-in-frames": "0", "auto-alt-ref": "0", "threads": "1", "row-mt": "0"}
    if options.crf == 0:
        vp9["lossless"] = "1"
    return vp9


def encode_settings(options):
    """What the json records about how the clips were made (each track's own ``size`` is in its entry)."""
    encoder, _, container_format = CLIP_CODECS[options.codec]
    return {"codec": options.codec, "encoder": encoder, "container": container_format, "max_size": options.size,
            "crf": options.crf, "gop": options.gop, "pix_fmt": options.pix_fmt, "bframes": 0,
            "margin": options.tracks.margin, "options": encoder_options(options)}
