"""Face tracks: linking, ranking and smoothing, on hand-made detections (tests/integration/test_tracks_on_videos.py
runs the detector on real videos)."""

import numpy as np
import pytest

from dfdtrain.data.faces.tracks import (TrackOptions, best_track_boxes, build_tracks, detection_frames,
                                        detections_agree, doubtful_reason, landmarks_sane, link_detections,
                                        moving_average, rank_tracks, schedule_detections, track_quality, track_windows)


# ------------------------------------------------------------------------------------- the parts, exactly
def moving(frame, x, size=40, score=0.99):
    return [x + frame, 50.0, x + frame + size, 50.0 + size, score]


def face(x, y, size, score=0.99, sane=True):
    """A detection with MTCNN's 5 landmarks where a face has them (eyes above the mouth), or scattered."""
    points = [(0.3, 0.4), (0.7, 0.4), (0.5, 0.6), (0.35, 0.8), (0.65, 0.8)] if sane else \
        [(0.1, 0.9), (0.95, 0.2), (0.5, 0.5), (0.4, 0.1), (0.6, 0.15)]
    return [x, y, x + size, y + size, score, *[value for px, py in points for value in (x + px * size, y + py * size)]]


def test_detection_frames_reach_the_last_frame():
    assert detection_frames(10, 4) == [0, 4, 8, 9]
    assert detection_frames(9, 4) == [0, 4, 8]
    assert detection_frames(3, 1) == [0, 1, 2]


def test_linking_follows_two_faces_across_a_gap_and_drops_a_blip():
    frames = list(range(0, 40, 4))
    detections = []
    for frame in frames:
        faces = [moving(frame, 10, size=60), moving(frame, 300, size=30)]
        if frame in (12, 16):  # the big face is missed twice: the track must bridge the gap
            faces = faces[1:]
        if frame == 20:  # a one-frame false positive
            faces.append([600.0, 400.0, 640.0, 440.0, 0.95])
        detections.append(faces)
    raw = link_detections(frames, detections, link_iou=0.3, max_gap=12)
    assert sorted(len(track["frames"]) for track in raw) == [1, 8, 10]
    kept, dropped = rank_tracks(raw, 37, TrackOptions(max_tracks=2, min_score=0.9), frames)
    assert [len(track["frames"]) for track in kept] == [8, 10]  # the big face first, though seen less often
    assert all(box[0] == frame + 10 for frame, box in zip(kept[0]["frames"], kept[0]["boxes"]))
    assert [(record["frames"], record["reason"]) for record in dropped] == [([20, 20], "few-detections")]
    one, dropped = rank_tracks(raw, 37, TrackOptions(max_tracks=1, min_score=0.9), frames)
    assert [track["frames"] for track in one] == [kept[0]["frames"]]
    assert [record["reason"] for record in dropped] == ["max-tracks", "few-detections"]
    # a gap longer than max_gap splits the track
    assert len(link_detections(frames, detections, link_iou=0.3, max_gap=4)) == 4


def test_windows_cover_the_span_interpolated_smoothed_and_square():
    track = {"frames": [10, 20], "boxes": [[0.0, 0.0, 30.0, 30.0, 1.0], [100.0, 0.0, 130.0, 30.0, 1.0]]}
    frames, windows = track_windows(track, smooth=1, margin=0.5)
    assert frames.tolist() == list(range(10, 21))
    assert np.allclose(windows[:, 2] - windows[:, 0], 60) and np.allclose(windows[:, 3] - windows[:, 1], 60)
    centres = (windows[:, 0] + windows[:, 2]) / 2
    assert np.allclose(centres, 15 + 10 * np.arange(11))  # linear between the detections
    jitter = np.array([[0.0], [10.0], [0.0], [10.0], [0.0]])
    assert np.allclose(moving_average(jitter, 3)[1:-1, 0], [10 / 3, 20 / 3, 10 / 3])
    assert np.allclose(moving_average(jitter, 3)[[0, -1], 0], [5, 5])  # shrunk window at the ends


def test_no_detection_gives_no_track():
    assert build_tracks([0, 4, 8], [[], [], []], TrackOptions()) == ([], [])


def test_short_or_unsure_tracks_are_dropped_as_false_faces():
    frames = detection_frames(300, 4)
    detections = []
    for frame in frames:
        faces = [moving(frame, 10, size=200, score=0.999), moving(frame, 600, size=60, score=0.92)]  # a face, a poster
        if frame in (100, 104, 108):  # a 9-frame box over a shadow, sure enough for MTCNN's 0.9 threshold
            faces.append([900.0, 400.0, 1100.0, 600.0, 0.99])
        detections.append(faces)
    kept, dropped = build_tracks(frames, detections, TrackOptions(max_tracks=3))
    assert len(kept) == 1 and kept[0]["source_frames"] == list(range(300)) and kept[0]["score"] == 0.999
    assert {record["reason"]: record["frames"] for record in dropped} == {"low-score": [0, 299], "short": [100, 108]}
    # the thresholds are options: without them all three are kept, the shadow as long as it was seen
    everything, _ = build_tracks(frames, detections, TrackOptions(max_tracks=3, min_share=0, min_score=0))
    assert sorted(len(track["source_frames"]) for track in everything) == [9, 300, 300]
    assert len(build_tracks(frames, detections, TrackOptions(max_tracks=3, min_share=0.03))[0]) == 2  # 9/300 = 0.03
    # the share is of the whole video: a second face over its last 40% is kept, not in a 1,000-frame video
    late = [faces[:1] + ([moving(frame, 600, size=60)] if frame >= 180 else [])
            for frame, faces in zip(frames, detections)]
    assert [track["source_frames"][0] for track in build_tracks(frames, late, TrackOptions(max_tracks=2))[0]] \
        == [0, 180]
    assert len(build_tracks(frames, late, TrackOptions(max_tracks=2), frame_count=1000)[0]) == 1
    # the best track is kept however short or unsure (a face MTCNN barely sees still beats a centre crop), and
    # says why it is doubtful
    barely = [[[900.0, 400.0, 1100.0, 600.0, 0.92]] if frame in (100, 104, 108) else [] for frame in frames]
    (only,), _ = build_tracks(frames, barely)
    assert len(only["source_frames"]) == 9 and only["problems"] == ["low-score"]
    assert doubtful_reason(only) == ("its best face track covers 3% of the frames; its detections' mean score is "
                                     "under min_score")
    assert doubtful_reason(kept[0]) is None and doubtful_reason(kept[0], min_coverage=1.0) is None
    with pytest.raises(ValueError, match="min_share"):
        TrackOptions(min_share=1.5)
    with pytest.raises(ValueError, match="min_share"):
        TrackOptions(min_score=float("nan"))


def test_a_long_plausible_track_outranks_a_short_or_implausible_one_whatever_its_confidence():
    """The shadow a DFDC trial stored: 9 frames at 0.993, large, its window off the frame edge, against the
    person's small face over the whole video at 0.95; and a face-like blob as long as the person whose
    landmarks are nowhere a face's. By area x score (the ranking before) the shadow won."""
    frames = detection_frames(300, 4)
    detections = []
    for frame in frames:
        found = [face(800.0, 300.0, 60.0, score=0.95), face(200.0, 600.0, 180.0, score=0.999, sane=False)]
        if 60 <= frame <= 68:
            found.append(face(1700.0, 100.0, 220.0, score=0.993))  # at the frame's right edge
        detections.append(found)
    kept, dropped = build_tracks(frames, detections, TrackOptions(max_tracks=2), frame_size=(1920, 1080))
    assert len(kept) == 1 and kept[0]["detections"][0][1:3] == [800.0, 300.0]
    quality = kept[0]["quality"]
    assert quality["coverage"] == quality["hit_rate"] == quality["landmarks_ok"] == quality["inside"] == 1.0
    assert quality["detections"] == len(frames) and quality["mean_score"] == 0.95 and quality["side"] == 60.0
    assert {record["reason"] for record in dropped} == {"landmarks", "short"}
    shadow = next(record for record in dropped if record["reason"] == "short")
    assert shadow["frames"] == [60, 68] and shadow["surest"] == [60, 1700.0, 100.0, 1920.0, 320.0, 0.993]
    # its window reaches off the frame (a fifth of it); one mostly off the frame is implausible
    shadow_track = link_detections([60, 64, 68], [[face(1700.0, 100.0, 220.0)]] * 3)[0]
    assert track_quality(shadow_track, 300, frames, 1 / 3, (1920, 1080))["inside"] == 0.8
    corner = link_detections([60, 64, 68], [[face(1800.0, -60.0, 240.0)]] * 3)[0]
    assert track_quality(corner, 300, frames, 1 / 3, (1920, 1080))["inside"] < 0.5
    # with no plausible face at all, the best of the implausible ones is kept, and the video is doubtful
    blob_only = [found[1:2] for found in detections]
    (blob,), _ = build_tracks(frames, blob_only, TrackOptions(), frame_size=(1920, 1080))
    assert blob["problems"] == ["landmarks"] and "landmarks are implausible" in doubtful_reason(blob)


def test_landmark_sanity():
    assert landmarks_sane(face(0.0, 0.0, 100.0)) and not landmarks_sane(face(0.0, 0.0, 100.0, sane=False))
    assert landmarks_sane([0.0, 0.0, 100.0, 100.0, 0.99]) is None  # no landmarks: no verdict
    upside_down = face(0.0, 0.0, 100.0)
    upside_down[6], upside_down[8], upside_down[12], upside_down[14] = 80.0, 80.0, 40.0, 40.0
    assert not landmarks_sane(upside_down)


def test_sampled_frames_keep_the_best_tracks_face_only():
    """A loader or predict detects on a few far-apart frames: the person on each, never a false face that is
    larger on one frame."""
    frames = [0, 20, 40, 60, 80]
    boxes = [[face(100.0 + frame / 4, 100.0, 80.0)] for frame in frames]
    boxes[2] = [face(500.0, 50.0, 200.0, score=0.999)] + boxes[2]  # larger and surer, on one frame
    boxes[3] = []  # the person missed
    chosen = best_track_boxes(frames, boxes, 100, (640, 480))
    assert [faces[0][0] if faces else None for faces in chosen] == [100.0, 105.0, 110.0, None, 120.0]
    assert best_track_boxes(frames, [[] for _ in frames], 100) == [[] for _ in frames]


def test_detections_are_refined_only_where_neighbours_disagree():
    options = TrackOptions(detect_every=16, refine_every=4, refine_iou=0.6)
    still = [100.0, 100.0, 200.0, 200.0, 0.99]
    moved = [300.0, 100.0, 400.0, 200.0, 0.99]
    asked = []

    def detect(frames):  # a still face that jumps to the right at frame 41, and a second face from frame 90 on
        asked.append(list(frames))
        return [[still if frame < 41 else moved] + ([moved[:1] + [300.0, 500.0, 400.0, 0.97]] if frame >= 90 else [])
                for frame in frames]

    frames, detections = schedule_detections(120, detect, options)
    assert asked[0] == list(range(0, 120, 16)) + [119]  # the coarse grid and the last frame, in one call
    # refinement halves the disagreeing gaps (32..48: the jump; 80..96: the new face) down to the 4-frame grid,
    # so each change is bracketed by detections 4 frames apart (40/44 around 41, 88/92 around 90)
    assert [frame for frame in frames if frame % 16 and frame != 119] == [40, 44, 88, 92]
    assert all(frame % 4 == 0 or frame == 119 for frame in frames)
    assert len(asked) == 3 and all(len(call) == len(set(call)) for call in asked)
    assert sorted(sum(asked, [])) == frames and len(detections) == len(frames)
    # a fixed grid when both steps agree, and refine_every never exceeds detect_every
    assert schedule_detections(30, detect, TrackOptions(detect_every=4, refine_every=4))[0] == detection_frames(30, 4)
    assert TrackOptions(detect_every=2).refine_every == 2
    assert detections_agree([still], [still[:4] + [0.5]], 0.6) and not detections_agree([still], [moved], 0.6)
    assert not detections_agree([still], [], 0.6) and detections_agree([], [], 0.6)


