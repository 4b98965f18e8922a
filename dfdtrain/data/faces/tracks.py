"""Face tracks: detections on every k-th frame -> one smoothed square crop window per frame, per person.

Used by the face-clip store (``dfdtrain shard --store faces``). The steps, each a small function:
  detection_frames  the frames a detector may see: every k-th, plus the last frame;
  schedule_detections  which of them it does see: every ``detect_every``-th frame, and between two neighbours
                    that disagree (a face appears or vanishes, moves or changes size: a box without a partner of
                    IoU >= ``refine_iou``) the middle one, halving the gap down to ``refine_every`` frames; a still
                    talking head costs few detections, a turning head as many as needed;
  link_detections   greedy IoU linking of boxes across detection frames into raw tracks (a track survives
                    gaps of up to ``max_gap`` frames, so a missed detection or a turned head does not split it);
  rank_tracks       choose tracks on evidence, not order: each raw track gets its ``track_quality`` figures (share
                    of the video it covers, how often the detector saw it where it looked, mean and minimum
                    confidence, landmark sanity, box size and position stability, how much of its crop window
                    lies inside the frame); a track failing a sanity check (``track_problems``: low confidence,
                    implausible landmarks, window mostly off the frame) ranks after every plausible one, a track
                    covering less than half the video after every long one, then by a quality score; the best
                    is kept, then up to ``max_tracks`` plausible ones spanning ``min_share`` of the video. Every
                    dropped track is returned with its reason. So a shadow MTCNN boxes at 0.99 for 9 frames never
                    displaces the person seen for 300;
  track_windows     per frame of the track's span (first to last detection): centre and size interpolated
                    linearly between detections, smoothed by a centred moving average of ``smooth`` frames,
                    grown by ``margin`` of the face size per side and made square.
``doubtful_reason`` says when even the best track is not to be trusted unseen (it covers less than half the
video, or fails a sanity check); ``best_track_boxes`` applies the same ranking to the few sampled frames a
loader or ``predict`` detects faces on.
A detection is [x1, y1, x2, y2, score] in source pixels, optionally followed by the detector's 5 landmarks as 10
numbers (MTCNN: left eye, right eye, nose, left and right mouth corner, x then y). Windows may reach outside the
frame (the crop pads with zeros).
"""

import dataclasses

import numpy as np


@dataclasses.dataclass
class TrackOptions:
    # The detector sees every detect_every-th frame (and the last), and more where neighbouring detections disagree,
    # down to every refine_every-th frame (at most detect_every); boxes in between are interpolated.
    # detect_every == refine_every: a fixed grid. On the real fixtures 16/4 keeps the windows within IoU 0.78-0.92
    # of the dense 4/4 grid's for about a third of its detections (tests/integration/test_tracks_on_videos.py).
    detect_every: int = 16
    refine_every: int = 4
    refine_iou: float = 0.6  # neighbouring detections agree when every box has a partner overlapping this much
    max_tracks: int = 1  # people kept per video, best first (rank_tracks)
    min_detections: int = 3  # a track seen on fewer detection frames is a false positive
    link_iou: float = 0.3  # a box continues a track when it overlaps the track's last box at least this much
    max_gap: int = 48  # frames a track may go undetected and still continue (about 2 s at 24-30 fps)
    smooth: int = 9  # frames in the moving average of window centre and size (odd; 1 = none)
    margin: float = 1 / 3  # window growth per side, as a fraction of the face size (the loader's crop default)
    # A second or later track spans at least this share of the video (first to last detection): shorter ones are
    # mostly false faces (a shadow, a poster), which data.face_track=random would train on.
    min_share: float = 0.2
    # A track whose detections score less than this on average fails a sanity check (track_problems): it ranks
    # after every plausible track, is never kept second, and as the best track makes its video doubtful.
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


# ------------------------------------------------------------------------------------------ choosing tracks
DOUBTFUL_COVERAGE = 0.5  # a best track covering less of the video than this makes the video doubtful
# Landmark sanity of one detection: the 5 points inside the box grown by this share of its size, the eyes above
# the mouth, and the eyes this far apart as a share of the box width (0.23-0.53 on the real fixtures, a turned
# head lowest; a face-like blob's landmarks fall anywhere).
LANDMARK_SLACK = 0.1
EYE_DISTANCE = (0.15, 0.75)
SANE_SHARE = 0.5  # a track whose detections pass the landmark checks less often than this fails
INSIDE_SHARE = 0.5  # a track whose crop windows lie less than this much inside the frame (mean) fails
PROBLEMS = {"low-score": "its detections' mean score is under min_score",
            "landmarks": "its landmarks are implausible on most detections",
            "off-frame": "its crop window lies mostly outside the frame"}


def landmarks_sane(box):
    """Whether one detection's landmarks look like a face's (see LANDMARK_SLACK); None without landmarks."""
    if len(box) < 15:
        return None
    x1, y1, x2, y2 = box[:4]
    points = np.asarray(box[5:15], dtype=float).reshape(5, 2)
    width, height = x2 - x1, y2 - y1
    slack_x, slack_y = LANDMARK_SLACK * width, LANDMARK_SLACK * height
    inside = np.all((points[:, 0] >= x1 - slack_x) & (points[:, 0] <= x2 + slack_x)
                    & (points[:, 1] >= y1 - slack_y) & (points[:, 1] <= y2 + slack_y))
    eyes_above_mouth = points[:2, 1].mean() < points[3:, 1].mean()
    eye_distance = np.linalg.norm(points[0] - points[1]) / max(width, 1e-6)
    return bool(inside and eyes_above_mouth and EYE_DISTANCE[0] <= eye_distance <= EYE_DISTANCE[1])


def window_inside(box, margin, frame_size):
    """The share of a detection's square crop window (grown by ``margin``) that lies inside the frame."""
    width, height = frame_size
    x1, y1, x2, y2 = box[:4]
    side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    centre_x, centre_y = (x1 + x2) / 2, (y1 + y2) / 2
    across = max(0.0, min(width, centre_x + side / 2) - max(0.0, centre_x - side / 2))
    down = max(0.0, min(height, centre_y + side / 2) - max(0.0, centre_y - side / 2))
    return across * down / side ** 2 if side > 0 else 0.0


def track_quality(track, frame_count, detection_frames, margin=1 / 3, frame_size=None):
    """The evidence that a raw track is a face, as JSON-ready figures.

    coverage: share of the video's frames its span covers; hit_rate: share of the detection frames within its
    span on which it was seen; mean_score / min_score: detector confidence; landmarks_ok: share of detections
    with sane landmarks (None: the detector gives none); inside: mean share of its crop window inside the frame
    (1 without ``frame_size``); size_jitter: median |log| ratio of box sides between consecutive detections;
    position_jitter: median centre step between them, in box sides; side: median box side in pixels.
    """
    frames = track["frames"]
    boxes = np.asarray([box[:5] for box in track["boxes"]], dtype=float)
    sides = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]).clip(min=1e-6)
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    looked = sum(1 for frame in detection_frames if frames[0] <= frame <= frames[-1]) or len(frames)
    sane = [check for check in map(landmarks_sane, track["boxes"]) if check is not None]
    if len(frames) > 1:
        size_jitter = float(np.median(np.abs(np.diff(np.log(sides)))))
        steps = np.linalg.norm(np.diff(centres, axis=0), axis=1) / ((sides[1:] + sides[:-1]) / 2)
        position_jitter = float(np.median(steps))
    else:
        size_jitter = position_jitter = 0.0
    inside = (float(np.mean([window_inside(box, margin, frame_size) for box in boxes])) if frame_size else 1.0)
    return {"coverage": round(min(1.0, (frames[-1] - frames[0] + 1) / max(frame_count, 1)), 4),
            "detections": len(frames), "hit_rate": round(min(1.0, len(frames) / looked), 4),
            "mean_score": round(float(boxes[:, 4].mean()), 4), "min_score": round(float(boxes[:, 4].min()), 4),
            "landmarks_ok": round(float(np.mean(sane)), 4) if sane else None, "inside": round(inside, 4),
            "size_jitter": round(size_jitter, 4), "position_jitter": round(position_jitter, 4),
            "side": round(float(np.median(sides)), 1)}


def track_problems(quality, options):
    """The sanity checks a track fails (keys of PROBLEMS), in that order; [] for a plausible face."""
    problems = []
    if quality["mean_score"] < options.min_score:
        problems.append("low-score")
    if quality["landmarks_ok"] is not None and quality["landmarks_ok"] < SANE_SHARE:
        problems.append("landmarks")
    if quality["inside"] < INSIDE_SHARE:
        problems.append("off-frame")
    return problems


def rank_score(quality, largest_side):
    """One number to order plausible tracks of like length: coverage, weighed down by missed detections, doubt,
    implausible landmarks, a window off the frame, jitter and (mildly, by the square root) a smaller face than
    the video's largest track."""
    stability = 1 / (1 + quality["size_jitter"] + quality["position_jitter"])
    prominence = np.sqrt(quality["side"] / largest_side) if largest_side > 0 else 1.0
    landmarks = 1.0 if quality["landmarks_ok"] is None else quality["landmarks_ok"]
    return float(quality["coverage"] * np.sqrt(quality["hit_rate"]) * quality["mean_score"] * landmarks
                 * quality["inside"] * stability * prominence)


def dropped_record(track, quality, reason):
    """What a sample's json keeps of a dropped track: its span, its surest detection and why it went."""
    best = int(np.argmax([box[4] for box in track["boxes"]]))
    return {"frames": [track["frames"][0], track["frames"][-1]], "detections": len(track["frames"]),
            "mean_score": quality["mean_score"], "coverage": quality["coverage"], "reason": reason,
            "surest": [track["frames"][best], *[round(float(value), 1) for value in track["boxes"][best][:4]],
                       round(float(track["boxes"][best][4]), 4)]}


def rank_tracks(tracks, frame_count, options, detection_frames=None, frame_size=None, long_share=DOUBTFUL_COVERAGE):
    """(kept, dropped): the raw ``tracks`` chosen on evidence, best first, each with "quality" (``track_quality``
    plus its "rank_score") and "problems" (``track_problems``); dropped ones as ``dropped_record`` with a reason.

    Order: plausible tracks before implausible ones, tracks covering ``long_share`` of the video before shorter
    ones, then ``rank_score``. The best track is kept whatever it is (``doubtful_reason`` judges it); after it,
    up to ``max_tracks`` - 1 plausible tracks spanning ``min_share`` of the video. Reasons: few-detections
    (under ``min_detections``), a PROBLEMS key, short, max-tracks.
    """
    detection_frames = sorted({frame for track in tracks for frame in track["frames"]}
                              if detection_frames is None else detection_frames)
    dropped, candidates = [], []
    for track in tracks:
        quality = track_quality(track, frame_count, detection_frames, options.margin, frame_size)
        if len(track["frames"]) < options.min_detections:
            dropped.append(dropped_record(track, quality, "few-detections"))
        else:
            candidates.append({**track, "quality": quality, "problems": track_problems(quality, options)})
    largest_side = max((track["quality"]["side"] for track in candidates), default=0.0)
    for track in candidates:
        track["quality"]["rank_score"] = round(rank_score(track["quality"], largest_side), 4)
    candidates.sort(key=lambda track: (not track["problems"], track["quality"]["coverage"] >= long_share,
                                       track["quality"]["rank_score"]), reverse=True)
    kept = candidates[:1]
    for track in candidates[1:]:
        reason = (track["problems"][0] if track["problems"]
                  else "short" if track["quality"]["coverage"] < options.min_share
                  else "max-tracks" if len(kept) >= options.max_tracks else None)
        if reason:
            dropped.append(dropped_record(track, track["quality"], reason))
        else:
            kept.append(track)
    dropped.sort(key=lambda record: (-record["detections"], record["frames"][0]))
    return kept, dropped


def doubtful_reason(track, min_coverage=DOUBTFUL_COVERAGE):
    """Why a video's best track is not to be trusted unseen, in a few words; None when it is."""
    quality = track["quality"]
    reasons = [PROBLEMS[problem] for problem in track["problems"]]
    if quality["coverage"] < min_coverage:
        reasons.insert(0, f"its best face track covers {quality['coverage']:.0%} of the frames")
    return "; ".join(reasons) or None


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


def build_tracks(frames, detections, options=None, frame_count=None, frame_size=None):
    """(tracks, dropped): the kept tracks best first, each {"id", "source_frames" [n], "windows" [n,4],
    "detections", "score", "quality", "problems"}, and the dropped ones with their reasons (``rank_tracks``).

    ``frames``/``detections``: the detection frames and the faces found on each (as the face detectors return
    them). ``frame_count``: the video's frames (default: up to the last detection frame, which
    ``detection_frames`` makes the video's last); ``frame_size``: (width, height), for the window-inside check.
    No kept track means no face was tracked.
    """
    options = options or TrackOptions()
    frame_count = frame_count or (frames[-1] + 1 if frames else 0)
    raw = link_detections(frames, detections, options.link_iou, options.max_gap)
    kept, dropped = rank_tracks(raw, frame_count, options, frames, frame_size)
    tracks = []
    for number, track in enumerate(kept):
        source_frames, windows = track_windows(track, options.smooth, options.margin)
        tracks.append({
            "id": number,
            "source_frames": source_frames.tolist(),
            "windows": np.round(windows, 1).tolist(),
            "detections": [[frame, *box] for frame, box in zip(track["frames"], track["boxes"])],
            "score": track["quality"]["mean_score"],
            "quality": track["quality"],
            "problems": track["problems"],
        })
    return tracks, dropped


def best_track_boxes(frames, boxes, frame_count, frame_size=None, margin=1 / 3):
    """Per sampled frame, [the best track's box] or [] (``rank_tracks`` over a few sampled frames, as a loader or
    ``predict`` detects them): a false face on some frames never stands in for the person. Tracks are linked
    loosely (any overlap, any gap: the frames are far apart) and a single detection may make one."""
    options = TrackOptions(max_tracks=1, min_detections=1, link_iou=0.1, max_gap=max(frame_count, 1), margin=margin)
    raw = link_detections(frames, boxes, options.link_iou, options.max_gap)
    kept, _ = rank_tracks(raw, frame_count, options, frames, frame_size)
    if not kept:
        return [[] for _ in frames]
    chosen = dict(zip(kept[0]["frames"], kept[0]["boxes"]))
    return [[chosen[frame]] if frame in chosen else [] for frame in frames]
