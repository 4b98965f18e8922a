"""Face tracks on real FF++/DFDC videos: with the real MTCNN detector, the kept track stays on the face."""

import numpy as np
import pytest

from dfdtrain.data.decode.decoders import build_decoder
from dfdtrain.data.faces.tracks import TrackOptions, box_iou, build_tracks, detection_frames, schedule_detections
from dfdtrain.data.decode.video import probe

FFPP_YOUTUBE = "ffpp/original_sequences/youtube/c40/videos"
# 585 shows a second, smaller face in the background on every frame: the fixtures' two-person clip.
TWO_PEOPLE = f"{FFPP_YOUTUBE}/585.mp4"


def face(x, y, size, score=0.99, sane=True):
    """A detection with MTCNN's 5 landmarks where a face has them (eyes above the mouth), or scattered."""
    points = [(0.3, 0.4), (0.7, 0.4), (0.5, 0.6), (0.35, 0.8), (0.65, 0.8)] if sane else \
        [(0.1, 0.9), (0.95, 0.2), (0.5, 0.5), (0.4, 0.1), (0.6, 0.15)]
    return [x, y, x + size, y + size, score, *[value for px, py in points for value in (x + px * size, y + py * size)]]


# ------------------------------------------------------------------------------------------ real videos
def detect_every_frame_of(detector, data, frame_count, every):
    """(detection frames, boxes): the detector on every ``every``-th frame, decoded with the pyav backend."""
    frames = detection_frames(frame_count, every)
    decoded = build_decoder("pyav").read(data, frames)
    return frames, detector.detect(decoded)


@pytest.fixture(scope="module")
def detector():
    pytest.importorskip("facenet_pytorch")
    from dfdtrain.data.faces.detect import build_face_detector

    return build_face_detector("mtcnn")


def check_windows_follow_faces(detector, data, track, margin, held_out, face_rank=0):
    """On frames the tracker never saw, MTCNN's face (``face_rank``-th largest) sits inside the track window and
    fills it as the margin says it should."""
    frames = build_decoder("pyav").read(data, held_out)
    for frame, faces in zip(held_out, detector.detect(frames)):
        assert len(faces) > face_rank, f"frame {frame}: MTCNN finds {len(faces)} face(s)"
        face = faces[face_rank][:4]
        x1, y1, x2, y2 = track["windows"][track["source_frames"].index(frame)]
        # the window without its margin: the face box as the tracker believes it
        shrink = (x2 - x1) * margin / (1 + 2 * margin)
        believed = [x1 + shrink, y1 + shrink, x2 - shrink, y2 - shrink]
        assert box_iou(face, believed) > 0.5, (frame, face, believed)
        assert x1 <= face[0] and y1 <= face[1] and face[2] <= x2 and face[3] <= y2, (frame, face, track["windows"])


@pytest.mark.parametrize("video, every", [(f"{FFPP_YOUTUBE}/183.mp4", 12),
                                          ("dfdc/dfdc_train_part_0/brtujopkby.mp4", 15)])
def test_track_stays_on_the_face_in_real_videos(fixtures, detector, video, every):
    data = (fixtures / video).read_bytes()
    frame_count = probe(data)["frames"]
    options = TrackOptions(detect_every=every)
    tracks, _ = build_tracks(*detect_every_frame_of(detector, data, frame_count, every), options)
    assert len(tracks) == 1
    track = tracks[0]
    # one person on screen the whole time: the track spans the video, a window per frame
    assert track["source_frames"] == list(range(frame_count)) and len(track["windows"]) == frame_count
    held_out = [frame for frame in np.linspace(3, frame_count - 4, 5).round().astype(int).tolist() if frame % every]
    check_windows_follow_faces(detector, data, track, options.margin, held_out)


@pytest.mark.parametrize("video", [f"{FFPP_YOUTUBE}/183.mp4", "dfdc/dfdc_train_part_0/brtujopkby.mp4"])
def test_scheduled_detections_keep_the_track_on_the_face(fixtures, detector, video):
    """The default schedule (every 16th frame, refined to every 4th where detections disagree) sees a fraction
    of the frames, and on frames it never saw MTCNN's face is still inside the window."""
    data = (fixtures / video).read_bytes()
    frame_count = probe(data)["frames"]
    options = TrackOptions()
    decoder = build_decoder("pyav")
    frames, detections = schedule_detections(frame_count, lambda wanted: detector.detect(decoder.read(data, wanted)),
                                             options)
    assert len(frames) < len(detection_frames(frame_count, options.refine_every)) / 2
    (track,), _ = build_tracks(frames, detections, options, frame_count=frame_count)
    assert track["source_frames"] == list(range(frame_count))
    seen = set(frames)
    held_out = [frame for frame in np.linspace(5, frame_count - 6, 7).round().astype(int).tolist() if frame not in seen]
    check_windows_follow_faces(detector, data, track, options.margin, held_out)


def test_two_people_give_two_tracks_when_asked(fixtures, detector):
    data = (fixtures / TWO_PEOPLE).read_bytes()
    frame_count = probe(data)["frames"]
    detected = detect_every_frame_of(detector, data, frame_count, 8)
    assert len(build_tracks(*detected, TrackOptions(detect_every=8, max_tracks=1))[0]) == 1
    tracks, _ = build_tracks(*detected, TrackOptions(detect_every=8, max_tracks=2))
    assert len(build_tracks(*detected, TrackOptions(detect_every=8, max_tracks=3, min_share=0, min_score=0))[0]) == 3
    three, _ = build_tracks(*detected, TrackOptions(detect_every=8, max_tracks=3))
    assert [track["source_frames"] for track in three] == [track["source_frames"] for track in tracks]
    assert [track["id"] for track in tracks] == [0, 1]
    main, background = tracks
    def side(track):
        return track["windows"][0][2] - track["windows"][0][0]

    assert side(main) > 2 * side(background)  # the largest face is track 0
    held_out = [frame for frame in (45, 170, 290) if frame in background["source_frames"]]
    assert len(held_out) >= 2
    check_windows_follow_faces(detector, data, main, 1 / 3, held_out, face_rank=0)
    check_windows_follow_faces(detector, data, background, 1 / 3, held_out, face_rank=1)
