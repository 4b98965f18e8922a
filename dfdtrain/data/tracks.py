"""Face tracks: detections on every k-th frame -> one smoothed square crop window per frame, per person.

Used by the face-clip store (``dfdtrain shard --store faces``). The steps, each a small function:
  detection_frames  the frames a detector may see: every k-th, plus the last frame;
  schedule_detections  which of them it does see: every ``detect_every``-th frame, and between two neighbours
                    that disagree (a face appears or vanishes, moves or changes size: a box without a partner of
                    IoU >= ``refine_iou``) the middle one, halving the gap down to ``refine_every`` frames; a still
                    talking head costs few detections, a turning head as many as needed;
  link_detections   greedy IoU linking of boxes across detection frames into raw tracks (a track survives
                    gaps of up to ``max_gap`` frames, so a missed detection or a turned head does not split it);
  rank_tracks       drop tracks with fewer than ``min_detections`` boxes, order by the sum of area x score over
                    their detections (large, sure and long-lived first); after the first, drop tracks spanning
                    less than ``min_share`` of the video or with a mean detection score under ``min_score`` (false
                    faces: MTCNN boxes a wall shadow for a few frames); keep ``max_tracks``;
  track_windows     per frame of the track's span (first to last detection): centre and size interpolated
                    linearly between detections, smoothed by a centred moving average of ``smooth`` frames,
                    grown by ``margin`` of the face size per side and made square.
Boxes are [x1, y1, x2, y2] in source pixels; windows may reach outside the frame (the crop pads with zeros).
"""

import dataclasses

import numpy as np


@dataclasses.dataclass
class TrackOptions:
    # The detector sees every detect_every-th frame (and the last), and more where neighbouring detections disagree,
    # down to every refine_every-th frame (at most detect_every); boxes in between are interpolated.
    # detect_every == refine_every: a fixed grid. On the real fixtures 16/4 keeps the windows within IoU 0.78-0.92
    # of the dense 4/4 grid's for about a third of its detections (tests/test_tracks.py).
    detect_every: int = 16
    refine_every: int = 4
    refine_iou: float = 0.6  # neighbouring detections agree when every box has a partner overlapping this much
    max_tracks: int = 1  # people kept per video, largest/surest first
    min_detections: int = 3  # a track seen on fewer detection frames is a false positive
    link_iou: float = 0.3  # a box continues a track when it overlaps the track's last box at least this much
    max_gap: int = 48  # frames a track may go undetected and still continue (about 2 s at 24-30 fps)
    smooth: int = 9  # frames in the moving average of window centre and size (odd; 1 = none)
    margin: float = 1 / 3  # window growth per side, as a fraction of the face size (the loader's crop default)
    # A second or later track spans at least this share of the video (first to last detection) and its detections
    # score this much on average: shorter or less sure ones are mostly false faces (a shadow, a poster), which
    # data.face_track=random would train on. The first (heaviest) track is kept as it is: a real face that
    # MTCNN barely sees (a dark DFDC room: 53 frames of 300 at a mean 0.93) still beats a centre crop.
    min_share: float = 0.2
    min_score: float = 0.95

    def __post_init__(self):
        if self.detect_every < 1 or self.max_tracks < 1 or self.min_detections < 1 or self.smooth < 1:
            raise ValueError("detect_every, max_tracks, min_detections and smooth must be >= 1")
        if self.refine_every < 1:
            raise ValueError("refine_every must be >= 1")
        self.refine_every = min(self.refine_every, self.detect_every)  # a denser fixed grid needs no refining
        if not 0 < self.refine_iou <= 1:
            raise ValueError("refine_iou must be in (0, 1]")
        if not 0 < self.link_iou <= 1 or self.max_gap < 1 or self.margin < 0:
            raise ValueError("link_iou must be in (0, 1], max_gap >= 1, margin >= 0")
        if not 0 <= self.min_share <= 1 or not 0 <= self.min_score <= 1:
            raise ValueError("min_share and min_score must be in [0, 1]")


def detection_frames(frame_count, detect_every):
    """Every ``detect_every``-th frame from 0, plus the last frame (so a track can reach the end)."""
    frames = list(range(0, frame_count, detect_every))
    if frames and frames[-1] != frame_count - 1:
        frames.append(frame_count - 1)
    return frames


def detections_agree(first, second, min_iou):
    """Whether two frames' detections show the same faces in about the same places: as many boxes, each with a
    partner (one to one, greedily by IoU) overlapping at least ``min_iou``."""
    if len(first) != len(second):
        return False
    pairs = sorted(((box_iou(a, b), i, j) for i, a in enumerate(first) for j, b in enumerate(second)), reverse=True)
    used_first, used_second = set(), set()
    for iou, i, j in pairs:
        if iou < min_iou:
            break
        if i not in used_first and j not in used_second:
            used_first.add(i)
            used_second.add(j)
    return len(used_first) == len(first)


def schedule_detections(frame_count, detect, options):
    """(frames, detections): ``detect(frames) -> [boxes per frame]`` called once per round, on every
    ``options.detect_every``-th frame (and the last), then on the middle frame of each pair of neighbours whose
    detections disagree, round after round, on the ``refine_every`` grid (``detection_frames``) only."""
    on_grid = set(detection_frames(frame_count, options.refine_every))
    found = {}
    wanted = detection_frames(frame_count, options.detect_every)
    while wanted:
        for frame, boxes in zip(wanted, detect(wanted)):
            found[frame] = boxes
        ordered = sorted(found)
        wanted = []
        for first, second in zip(ordered, ordered[1:]):
            if detections_agree(found[first], found[second], options.refine_iou):
                continue
            middle = (first + second) // 2 // options.refine_every * options.refine_every
            if first < middle < second and middle in on_grid and middle not in found:
                wanted.append(middle)
    frames = sorted(found)
    return frames, [found[frame] for frame in frames]


def box_iou(first, second):
    x1, y1 = max(first[0], second[0]), max(first[1], second[1])
    x2, y2 = min(first[2], second[2]), min(first[3], second[3])
    overlap = max(0.0, x2 - x1) * max(0.0, y2 - y1)
    union = ((first[2] - first[0]) * (first[3] - first[1]) + (second[2] - second[0]) * (second[3] - second[1])
             - overlap)
    return overlap / union if union > 0 else 0.0


def link_detections(frames, detections, link_iou=0.3, max_gap=48):
    """Raw tracks [{"frames": [f, ...], "boxes": [[x1, y1, x2, y2, score], ...]}] from per-frame detections.

    ``detections[i]`` lists the boxes found on ``frames[i]``. On each frame, (track, box) pairs are matched
    greedily by IoU with the track's last box, best pair first; a box left over starts a new track.
    """
    tracks = []
    for frame, boxes in zip(frames, detections):
        alive = [track for track in tracks if frame - track["frames"][-1] <= max_gap]
        pairs = sorted(((box_iou(track["boxes"][-1], box), t, b) for t, track in enumerate(alive)
                        for b, box in enumerate(boxes)), reverse=True)
        used_tracks, used_boxes = set(), set()
        for iou, t, b in pairs:
            if iou < link_iou:
                break
            if t in used_tracks or b in used_boxes:
                continue
            alive[t]["frames"].append(frame)
            alive[t]["boxes"].append(list(boxes[b]))
            used_tracks.add(t)
            used_boxes.add(b)
        for b, box in enumerate(boxes):
            if b not in used_boxes:
                tracks.append({"frames": [frame], "boxes": [list(box)]})
    return tracks


def track_weight(track):
    """Sum of area x score over the track's detections: large, sure, long-lived faces weigh most."""
    return float(sum((x2 - x1) * (y2 - y1) * score for x1, y1, x2, y2, score in track["boxes"]))


def mean_score(track):
    return float(np.mean([box[4] for box in track["boxes"]]))


def rank_tracks(tracks, max_tracks=1, min_detections=3, min_span=1, min_score=0.0):
    """The kept tracks, heaviest first (at most ``max_tracks``): each seen on ``min_detections`` detection frames;
    after the heaviest, only those spanning ``min_span`` frames (first to last detection) with a mean score of
    ``min_score``."""
    seen = sorted((track for track in tracks if len(track["frames"]) >= min_detections), key=track_weight,
                  reverse=True)
    kept = seen[:1] + [track for track in seen[1:] if track["frames"][-1] - track["frames"][0] + 1 >= min_span
                       and mean_score(track) >= min_score]
    return kept[:max_tracks]


def moving_average(values, window):
    """Centred moving average along axis 0; near the ends the window shrinks to what exists (no edge bias)."""
    values = np.asarray(values, dtype=float)
    if window <= 1 or len(values) < 2:
        return values
    half = window // 2
    kernel = np.ones(2 * half + 1)
    padded_counts = np.convolve(np.ones(len(values)), kernel, mode="same")
    return np.stack([np.convolve(values[:, column], kernel, mode="same") / padded_counts
                     for column in range(values.shape[1])], axis=1)


def track_windows(track, smooth=9, margin=1 / 3):
    """(source frames [n] int, square windows [n,4]) over the track's span, from first to last detection."""
    frames = np.asarray(track["frames"], dtype=float)
    boxes = np.asarray([box[:4] for box in track["boxes"]], dtype=float)
    centre_size = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2,
                            np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])], axis=1)
    span = np.arange(int(frames[0]), int(frames[-1]) + 1)
    per_frame = np.stack([np.interp(span, frames, centre_size[:, column]) for column in range(3)], axis=1)
    centre_x, centre_y, face_side = moving_average(per_frame, smooth).T
    side = face_side * (1 + 2 * margin)
    windows = np.stack([centre_x - side / 2, centre_y - side / 2, centre_x + side / 2, centre_y + side / 2], axis=1)
    return span, windows


def build_tracks(frames, detections, options=None, frame_count=None):
    """Ranked tracks, each {"id", "source_frames" [n], "windows" [n,4], "detections", "score"}.

    ``frames``/``detections``: the detection frames and the boxes found on each (``[x1, y1, x2, y2, score]``,
    as the face detectors return them). ``frame_count``: the video's frames, for ``min_share`` (default: up to
    the last detection frame, which ``detection_frames`` makes the video's last). An empty list means no face
    was tracked.
    """
    options = options or TrackOptions()
    frame_count = frame_count or (frames[-1] + 1 if frames else 0)
    raw = link_detections(frames, detections, options.link_iou, options.max_gap)
    # a share of the video in frames
    min_span = max(1, int(np.ceil(options.min_share * frame_count - 1e-9)))  # 1e-9: 0.2 * 300 is 60.000...01
    tracks = []
    for number, track in enumerate(rank_tracks(raw, options.max_tracks, options.min_detections, min_span,
                                               options.min_score)):
        source_frames, windows = track_windows(track, options.smooth, options.margin)
        tracks.append({
            "id": number,
            "source_frames": source_frames.tolist(),
            "windows": np.round(windows, 1).tolist(),
            "detections": [[frame, *box] for frame, box in zip(track["frames"], track["boxes"])],
            "score": round(mean_score(track), 4),
        })
    return tracks
