"""What sharding a video costs, predicted from its manifest row.

``predicted_seconds(row, options)`` is what ``shard --part I/N`` balances parts by: one core's seconds to put the
video in a shard. The original store copies bytes, so its cost follows the file size. The face store decodes
every frame (its cost follows frames x pixels), crops and encodes every frame of the face track (per frame, at
most ``--face-size``), and runs the face detector on some frames (per detection, on a copy of at most 640 px):

    seconds = frames x (DECODE_S_PER_MEGAPIXEL x megapixels + ENCODE_S_PER_FRAME)
              + predicted detections x DETECT_S_PER_DETECTION,   detections = frames / detect_every x REFINED

Bytes predict the face store badly: an FF++ c40 clip of 390 frames at 720p is 0.2 MB, a DFDC clip of 300 frames
at 1080p 3.8 MB, for about the same work (the parts of 18 clips balanced by bytes got 14 and 4 videos). The
constants are the one-core seconds per stage ``bench shard`` measured on the fixtures on 2026-12-02 (AMD EPYC);
only their ratios matter for the balance (decode a megapixel-frame : encode a frame : one detection = 1 : 1.7 :
12), and a later run on a faster machine kept about the same (2026-12-05: 2.1 ms, 2.4-4.4 ms, 25-29 ms, so 1 :
1.1-2.1 : 12-14). With them 2 parts of the 18 fixture videos were predicted within 1% of each other and measured
within 0.4% (benchmarks/results/shard_cpu.json).
"""

DECODE_S_PER_MEGAPIXEL = 0.006  # decode: 3.7 s for 300 frames of 1080p (2.07 MP) on one core
ENCODE_S_PER_FRAME = 0.010  # cut, encode and verify one face-clip frame (256 px at most)
DETECT_S_PER_DETECTION = 0.07  # MTCNN on one 640 px copy, on one core
REFINED = 1.5  # detections beyond the detect_every grid, where neighbouring detections disagree
ORIGINAL_S_PER_BYTE = 3e-9  # the original store: read, probe, hash and write
UNPROBED_S_PER_BYTE = 1.6e-6  # a face-store row without frames/width/height: a DFDC clip's seconds per byte
# --landmarks dlib68: the predictor and a clip-sized RGB copy per stored frame (1.6-2.6 ms measured on 2 busy
# cores, 2026-12-05; ~1 ms alone)
LANDMARK_S_PER_FRAME = 0.0015


def predicted_seconds(row, options):
    """One core's predicted seconds to shard the video of manifest ``row`` with the run's ``options`` (the
    plan options of ``write_shards``: ``store`` and, for faces, ``face_clips``)."""
    size = row.get("bytes") or 0
    if options.get("store") != "faces":
        return ORIGINAL_S_PER_BYTE * size
    frames, width, height = row.get("frames"), row.get("width"), row.get("height")
    if not all(isinstance(value, (int, float)) and value > 0 for value in (frames, width, height)):
        return UNPROBED_S_PER_BYTE * size
    detect_every = (options.get("face_clips") or {}).get("tracks", {}).get("detect_every", 16)
    detections = frames / detect_every * REFINED + 1
    per_frame = DECODE_S_PER_MEGAPIXEL * width * height / 1e6 + ENCODE_S_PER_FRAME
    if options.get("landmarks"):
        per_frame += LANDMARK_S_PER_FRAME
    return frames * per_frame + detections * DETECT_S_PER_DETECTION
