"""Dataset indexers: one registry entry per dataset layout.

An indexer walks a dataset's own folder layout and label files and returns the videos it found (key,
relative path, label 0 real / 1 fake, dataset, leakage group, official split if the dataset defines one,
plus dataset-specific fields) and the entries it had to skip, with a reason. It does not open videos:
probing is the index stage's job, shared by every dataset.

Label-file formats and their traps: ../shared/fixtures/labels/FORMATS.md.
"""

import csv
import dataclasses
import json
import re
from pathlib import Path

from dfdtrain.data.decode.video import is_media_file
from dfdtrain.data.ingest.found import Found, is_file_or_dangling, official_split, random_split, walk_files
from dfdtrain.core.errors import DfdError
from dfdtrain.core.registry import Registry

DATASETS = Registry("dataset")


@dataclasses.dataclass
class IndexOptions:
    official_splits: bool = True  # use the dataset's own split files when present
    ffpp_splits: str = None  # folder with FF++ train/val/test.json (default: looked for under root)
    celebdf_test_list: str = None  # List_of_testing_videos.txt (default: root/List_of_testing_videos.txt)
    celebdf_group_by: str = "identity"  # "identity" or "video" (a fake joins the real clip it came from)
    compressions: tuple = ()  # FF++: keep only these (raw, c23, c40); empty = all found
    group_regex: str = None  # folder: group = first capture group of this regex on the relative path
    name: str = None  # folder: the rows' dataset name and key prefix (default "folder")


def _media_files(folder):
    return (path for path in walk_files(folder) if is_media_file(path.name))


# ---------------------------------------------------------------------------------------------- DFDC
DFDC_LABELS = {"REAL": 0, "FAKE": 1}


@DATASETS.register("dfdc")
def index_dfdc(root, options):
    """Every metadata.json under root (dfdc_train_part_*, train_sample_videos) and the test labels.csv.

    Group = the `original` cluster: a fake joins the group of the real video it was made from, whether or
    not that original is on disk (it usually is not in train_sample_videos).
    """
    root = Path(root)
    found = Found()
    metadata_files = sorted(root.rglob("metadata.json"))
    label_csvs = sorted(root.rglob("labels.csv"))
    if not metadata_files and not label_csvs:
        raise DfdError(f"{root}: no DFDC metadata.json or labels.csv under this folder")
    csv_paths = ", ".join(str(path) for path in label_csvs)
    if not label_csvs:
        found.split_source = random_split(root / "**" / "labels.csv",
                                          f"no official test labels.csv was found under {root}")
    elif not options.official_splits:
        found.split_source = random_split(csv_paths, f"--no-official-splits was given (ignored {csv_paths})")
    else:
        found.split_source = official_split(csv_paths)
    for metadata_path in metadata_files:
        folder = metadata_path.parent
        try:
            metadata = json.loads(metadata_path.read_text())
            if not isinstance(metadata, dict):
                raise ValueError("top level is not an object")
        except (ValueError, UnicodeDecodeError) as error:
            found.skip(root, metadata_path, "bad label file", str(error))
            continue
        on_disk = {path.name: path for path in folder.iterdir()
                   if is_file_or_dangling(path) and is_media_file(path.name)}
        for name, info in metadata.items():
            label = DFDC_LABELS.get(str((info or {}).get("label", "")).upper())
            if label is None:
                found.skip(root, folder / name, "bad label", f"label {info!r} in {metadata_path.name}")
                continue
            if name not in on_disk:
                found.skip(root, folder / name, "missing file", f"listed in {metadata_path.relative_to(root)}")
                continue
            original = info.get("original") if label == 1 else None
            group = Path(original).stem if original else Path(name).stem
            found.add(root, on_disk[name], label, "dfdc", f"dfdc:{group}", key_parts=[Path(name).stem],
                      original=original, part=folder.name)
        for name in sorted(set(on_disk) - set(metadata)):
            found.skip(root, on_disk[name], "no label", f"not in {metadata_path.relative_to(root)}")
    for csv_path in label_csvs:
        folder = csv_path.parent
        on_disk = {path.name: path for path in _media_files(folder)}
        with open(csv_path, newline="") as handle:
            reader = csv.DictReader(handle)
            if not {"filename", "label"} <= set(reader.fieldnames or ()):
                raise DfdError(f"{csv_path}: expected a 'filename,label' header, found {reader.fieldnames}")
            labelled = {}
            for row in reader:
                if row["label"].strip() not in ("0", "1"):
                    found.skip(root, folder / row["filename"], "bad label", f"label {row['label']!r} in labels.csv")
                    continue
                labelled[row["filename"]] = int(row["label"])  # 0 = REAL, 1 = FAKE
        for name, label in labelled.items():
            if name not in on_disk:
                found.skip(root, folder / name, "missing file", f"listed in {csv_path.relative_to(root)}")
                continue
            split = "test" if options.official_splits else None
            found.add(root, on_disk[name], label, "dfdc", f"dfdc:{Path(name).stem}", split=split,
                      key_parts=[Path(name).stem], part=folder.name)
        for name in sorted(set(on_disk) - set(labelled)):
            found.skip(root, on_disk[name], "no label", f"not in {csv_path.relative_to(root)}")
    # A video in a folder without metadata.json (and not under a labels.csv) has no label: list it, not drop it.
    metadata_folders = {path.parent for path in metadata_files}
    csv_folders = [path.parent for path in label_csvs]
    for path in _media_files(root):
        if path.parent in metadata_folders or any(path.is_relative_to(folder) for folder in csv_folders):
            continue
        folder = path.parent.relative_to(root).as_posix() if path.parent != root else str(root)
        found.skip(root, path, "unlabelled", f"no metadata.json in {folder}")
    return found


# ------------------------------------------------------------------------------------------ Celeb-DF
CELEBDF_FOLDERS = {"Celeb-real": 0, "YouTube-real": 0, "Celeb-synthesis": 1}
_CELEB_REAL = re.compile(r"^id(\d+)_(\d+)$")
_CELEB_FAKE = re.compile(r"^id(\d+)_id(\d+)_(\d+)$")


def read_celebdf_test_list(path):
    """List_of_testing_videos.txt: '<1 REAL | 0 FAKE> <folder>/<file>.mp4' per line, no header.

    splitlines() keeps the first line (a CSV reader with a header drops it) and needs no trailing newline.
    Returns {relative path: label with 0 real / 1 fake}.
    """
    listed = {}
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        flag, _, relative = line.strip().partition(" ")
        if flag not in ("0", "1") or not relative:
            raise DfdError(f"{path}:{number}: expected '<0|1> <folder>/<file>', got {line.strip()!r}")
        listed[relative.strip()] = 0 if flag == "1" else 1  # the file says 1 = REAL
    return listed


@DATASETS.register("celebdf")
def index_celebdf(root, options):
    """Celeb-DF v1/v2: Celeb-real, YouTube-real, Celeb-synthesis; official test split from the list.

    Group = identity: id<A>_<NNNN> and the fakes id<A>_id<B>_<NNNN> made on identity A's footage share
    `celebdf:id<A>`; a YouTube-real clip is its own group. With group_by="video", a fake joins only the
    real clip it was made from (Celeb-real/id<A>_<NNNN>).
    """
    root = Path(root)
    found = Found()
    if not any((root / folder).is_dir() for folder in CELEBDF_FOLDERS):
        raise DfdError(f"{root}: no Celeb-real, YouTube-real or Celeb-synthesis folder under this folder")
    if options.celebdf_group_by not in ("identity", "video"):
        raise DfdError(f"celebdf group_by must be 'identity' or 'video', not {options.celebdf_group_by!r}")
    test_list_path = Path(options.celebdf_test_list or root / "List_of_testing_videos.txt")
    if options.celebdf_test_list and not test_list_path.is_file():
        raise DfdError(f"{test_list_path}: test list not found")
    test_list = {}
    if not options.official_splits:
        found.split_source = random_split(test_list_path, "--no-official-splits was given")
    elif test_list_path.is_file():
        test_list = read_celebdf_test_list(test_list_path)
        found.split_source = official_split(test_list_path)
    else:
        found.split_source = random_split(test_list_path, f"the official test list was not found at {test_list_path}")
    seen = set()
    for folder, label in CELEBDF_FOLDERS.items():
        for path in _media_files(root / folder):
            relative = path.relative_to(root).as_posix()
            seen.add(relative)
            stem = path.stem
            extra = {}
            if folder == "YouTube-real":
                group = f"celebdf:yt-{stem}"
            elif (match := _CELEB_FAKE.match(stem)) and label == 1:
                target, source, clip = match.groups()
                extra = {"identity": f"id{target}", "source_identity": f"id{source}",
                         "original": f"Celeb-real/id{target}_{clip}.mp4"}
                group = f"celebdf:id{target}" if options.celebdf_group_by == "identity" else \
                    f"celebdf:id{target}_{clip}"
            elif (match := _CELEB_REAL.match(stem)) and label == 0:
                extra = {"identity": f"id{match.group(1)}"}
                group = f"celebdf:id{match.group(1)}" if options.celebdf_group_by == "identity" else \
                    f"celebdf:{stem}"
            else:  # an unexpected name: keep it, alone in its group
                group = f"celebdf:{stem}"
            listed_label = test_list.get(relative)
            if listed_label is not None and listed_label != label:
                found.skip(root, path, "label conflict", f"folder says {label}, test list says {listed_label}")
                continue
            split = "test" if relative in test_list else None
            found.add(root, path, label, "celebdf", group, split=split, key_parts=[folder, stem], folder=folder,
                      **extra)
    for relative in sorted(set(test_list) - seen):
        found.skip(root, root / relative, "missing file", f"listed in {test_list_path.name}")
    return found


# ----------------------------------------------------------------------------------- FaceForensics++
FFPP_COMPRESSIONS = ("raw", "c23", "c40")
_FFPP_PAIR_FAKE = re.compile(r"^(\d{3})_(\d{3})$")
_DFD_FAKE = re.compile(r"^(\d+)_(\d+)__(.+)__([A-Za-z0-9]+)$")
_DFD_REAL = re.compile(r"^(\d+)__(.+)$")


def read_ffpp_splits(folder):
    """[(id, id, split)] from FF++ train/val/test.json: lists of [id, id] pairs, order inside arbitrary."""
    pairs, split_of = [], {}
    for split in ("train", "val", "test"):
        path = Path(folder) / f"{split}.json"
        if not path.is_file():
            continue
        try:
            listed = json.loads(path.read_text())
        except ValueError as error:
            raise DfdError(f"{path}: not valid JSON ({error})") from None
        for pair in listed:
            if len(pair) != 2:
                raise DfdError(f"{path}: expected pairs of ids, found {pair!r}")
            for video_id in pair:
                if split_of.setdefault(str(video_id), split) != split:
                    raise DfdError(f"{path}: id {video_id} is also in the {split_of[str(video_id)]} split")
            pairs.append((str(pair[0]), str(pair[1]), split))
    return pairs


class _UnionFind:
    def __init__(self):
        self.parent = {}

    def find(self, item):
        self.parent.setdefault(item, item)
        while self.parent[item] != item:
            self.parent[item] = self.parent[self.parent[item]]
            item = self.parent[item]
        return item

    def union(self, first, second):
        self.parent[self.find(first)] = self.find(second)

    def members(self):
        groups = {}
        for item in self.parent:
            groups.setdefault(self.find(item), []).append(item)
        return {item: "-".join(sorted(groups[self.find(item)])) for item in self.parent}


@DATASETS.register("ffpp")
def index_ffpp(root, options):
    """FaceForensics++ (+ DeepFakeDetection): original_sequences/* and manipulated_sequences/<method>.

    Group: YouTube ids linked by a fake <target>_<source> (= the official pairs) share one group; actors
    (DeepFakeDetection) are grouped by the target actor. Official splits from train/val/test.json.
    """
    root = Path(root)
    found = Found()
    if not (root / "original_sequences").is_dir() and not (root / "manipulated_sequences").is_dir():
        raise DfdError(f"{root}: no original_sequences or manipulated_sequences folder under this folder")
    looked_at = [Path(options.ffpp_splits)] if options.ffpp_splits else [root / "splits", root]
    split_folder = next((folder for folder in looked_at if (folder / "train.json").is_file()), None)
    if options.ffpp_splits and split_folder is None:
        raise DfdError(f"{options.ffpp_splits}: no train.json (FF++ split files) in this folder")
    official_pairs = []
    if not options.official_splits:
        found.split_source = random_split(split_folder or looked_at[0], "--no-official-splits was given")
    elif split_folder:
        official_pairs = read_ffpp_splits(split_folder)
        found.split_source = official_split(split_folder)
    else:
        places = " or ".join(str(folder / "train.json") for folder in looked_at)
        found.split_source = random_split(looked_at[0], f"the official lists were not found at {places}")
    split_of = {video_id: split for first, second, split in official_pairs for video_id in (first, second)}
    compressions = tuple(options.compressions) or FFPP_COMPRESSIONS

    videos = []  # (path, label, method, source_kind, compression)
    for source_kind in ("youtube", "actors"):
        for compression in compressions:
            for path in _media_files(root / "original_sequences" / source_kind / compression / "videos"):
                videos.append((path, 0, "original", source_kind, compression))
    manipulated = root / "manipulated_sequences"
    for method_folder in sorted(manipulated.iterdir()) if manipulated.is_dir() else ():
        for compression in compressions:
            for path in _media_files(method_folder / compression / "videos"):
                source_kind = "actors" if method_folder.name == "DeepFakeDetection" else "youtube"
                videos.append((path, 1, method_folder.name, source_kind, compression))
    left_out = {compression: len(_ffpp_videos(root, compression)) for compression in FFPP_COMPRESSIONS
                if compression not in compressions}
    if any(left_out.values()):  # --compression c23: how many c40/raw videos it excluded
        found.excluded["compression"] = {compression: count for compression, count in left_out.items() if count}

    # YouTube groups: connect the ids of every official pair and every fake's target/source.
    youtube_ids = _UnionFind()
    for first, second, _ in official_pairs:
        youtube_ids.union(first, second)
    for path, label, method, source_kind, _ in videos:
        if source_kind == "youtube" and label == 1 and (match := _FFPP_PAIR_FAKE.match(path.stem)):
            youtube_ids.union(*match.groups())
        elif source_kind == "youtube":
            youtube_ids.find(path.stem)
    component = youtube_ids.members()

    for path, label, method, source_kind, compression in videos:
        stem = path.stem
        extra = {"method": method, "compression": compression, "source": source_kind}
        if source_kind == "youtube":
            match = _FFPP_PAIR_FAKE.match(stem)
            ids = match.groups() if (label == 1 and match) else (stem,)
            group = f"ffpp:{component[ids[0]]}"
            splits = {split_of.get(video_id) for video_id in ids}
            split = splits.pop() if len(splits) == 1 else None
            if label == 1:
                extra.update(target=ids[0], source_id=ids[-1])
        else:
            match = _DFD_FAKE.match(stem) if label == 1 else _DFD_REAL.match(stem)
            actor = match.group(1) if match else stem
            group, split = f"ffpp:actor{actor}", None
            if label == 1 and match:
                extra.update(target=match.group(1), source_id=match.group(2))
        name = method if label == 1 else source_kind
        found.add(root, path, label, "ffpp", group, split=split, key_parts=[name, compression, stem], **extra)
    return found


def _ffpp_videos(root, compression):
    """Every FF++ video file of one compression, real and fake."""
    folders = [root / "original_sequences" / kind / compression / "videos" for kind in ("youtube", "actors")]
    manipulated = root / "manipulated_sequences"
    folders += [method / compression / "videos" for method in sorted(manipulated.iterdir())] \
        if manipulated.is_dir() else []
    return [path for folder in folders for path in _media_files(folder)]


# -------------------------------------------------------------------------------------------- folder
@DATASETS.register("folder")
def index_folder(root, options):
    """A user's own data: root/real/** and root/fake/** (videos, or still images as one-frame clips).

    Group: the first capture group of `group_regex` on the relative path; else the first sub-folder
    (real/<person>/clip.mp4 -> <person>, so one person's real and fake clips stay together); else the file.
    The rows' dataset, key prefix and group prefix are ``options.name`` (default "folder"), so two folder sets
    keep their own names in evaluate's per-dataset breakdown and never share keys or groups.
    """
    root = Path(root)
    name = options.name or "folder"
    # no "_": make_key joins parts with "_", so a name without one is a key prefix no other name can produce
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,31}", name):
        raise DfdError(f"dataset name {name!r}: expected a short identifier (a letter, then up to 31 letters, "
                       "digits or -)")
    found = Found(split_source=random_split(None, "the folder layout has no official split"), dataset=name)
    label_folders = {folder.name.lower(): folder for folder in root.iterdir() if folder.is_dir()} \
        if root.is_dir() else {}
    if not root.is_dir():
        raise DfdError(f"{root}: not a folder")
    if "real" not in label_folders and "fake" not in label_folders:
        raise DfdError(f"{root}: expected real/ and fake/ sub-folders")
    pattern = re.compile(options.group_regex) if options.group_regex else None
    for label_name, label in (("real", 0), ("fake", 1)):
        folder = label_folders.get(label_name)
        if folder is None:
            continue
        for path in walk_files(folder):
            if not is_media_file(path.name):
                found.skip(root, path, "not a video", "unknown file extension")
                continue
            relative = path.relative_to(folder)
            if pattern is not None:
                match = pattern.search(path.relative_to(root).as_posix())
                if not match:
                    found.skip(root, path, "no group", f"group regex {options.group_regex!r} does not match")
                    continue
                group = match.group(1) if match.groups() else match.group(0)
            elif len(relative.parts) > 1:
                group = relative.parts[0]
            else:
                group = path.stem
            found.add(root, path, label, name, f"{name}:{group}")
    return found
