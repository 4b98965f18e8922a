"""dfdtrain index: every dataset layout, on the real fixtures and on generated trees (the split rules: unit/test_splits.py)."""

import collections
import hashlib
import json
import shutil
import tarfile

import pytest

from support import SMALL_CLIP, place_video, run_cli
from dfdtrain.data.ingest.datasets import IndexOptions, read_celebdf_test_list
from dfdtrain.data.ingest.found import is_file_or_dangling, walk_files
from dfdtrain.data.ingest.manifest import build_manifest
from dfdtrain.data.ingest.splits import leaking_groups
from dfdtrain.data.faces.crops import crop_regions
from dfdtrain.data.shards.writer import write_shards
from dfdtrain.core.errors import DfdError
from dfdtrain.core.fileio import read_json, read_jsonl


def by_path(rows):
    return {row["path"]: row for row in rows}


def assert_no_leakage(rows):
    splits_of = collections.defaultdict(set)
    for row in rows:
        splits_of[row["group"]].add(row["split"])
    assert all(len(splits) == 1 for splits in splits_of.values()), leaking_groups(rows)


# ------------------------------------------------------------------------------------------------ DFDC
def test_dfdc_real_fixtures(fixtures):
    rows, summary = build_manifest("dfdc", fixtures / "dfdc", progress=False)
    rows = by_path(rows)
    assert set(rows) == {"dfdc_train_part_0/brtujopkby.mp4", "train_sample_videos/abofeumbvv.mp4",
                         "train_sample_videos/abqwwspghj.mp4"}
    portrait = rows["dfdc_train_part_0/brtujopkby.mp4"]
    assert (portrait["label"], portrait["group"], portrait["original"]) == (1, "dfdc:gnmmhlbzge", "gnmmhlbzge.mp4")
    assert (portrait["width"], portrait["height"], portrait["frames"], portrait["codec"]) == (1080, 1920, 300, "h264")
    assert portrait["key"] == "dfdc_brtujopkby" and portrait["part"] == "dfdc_train_part_0"
    # part_0 lists 1 absent file, part_1 has no videos at all (2 listed), the sample folder 3 absent of 5
    assert summary["skipped_by_reason"] == {"missing file": 6}
    assert_no_leakage(rows.values())


def test_dfdc_generated_tree_groups_test_csv_and_unlabelled(tmp_path):
    part = tmp_path / "dfdc_train_part_3"
    for name in ("real1", "fake1a", "fake1b", "fake2", "stray"):
        place_video(part / f"{name}.mp4")
    (part / "metadata.json").write_text(json.dumps({
        "real1.mp4": {"label": "REAL", "split": "train", "original": None},
        "fake1a.mp4": {"label": "FAKE", "split": "train", "original": "real1.mp4"},
        "fake1b.mp4": {"label": "FAKE", "split": "train", "original": "real1.mp4"},
        "fake2.mp4": {"label": "FAKE", "split": "train", "original": "absent.mp4"},  # dangling original
        "gone.mp4": {"label": "FAKE", "split": "train", "original": "real1.mp4"},  # file missing
    }))
    test_folder = tmp_path / "test"
    place_video(test_folder / "videos" / "t0.mp4")
    place_video(test_folder / "videos" / "t1.mp4")
    (test_folder / "labels.csv").write_text("filename,label\nt0.mp4,0\nt1.mp4,1\nt9.mp4,1\n")

    rows, summary = build_manifest("dfdc", tmp_path, progress=False)
    rows = by_path(rows)
    groups = {path: row["group"] for path, row in rows.items()}
    assert groups["dfdc_train_part_3/real1.mp4"] == groups["dfdc_train_part_3/fake1a.mp4"] == \
        groups["dfdc_train_part_3/fake1b.mp4"] == "dfdc:real1"
    assert groups["dfdc_train_part_3/fake2.mp4"] == "dfdc:absent"
    assert rows["test/videos/t0.mp4"]["label"] == 0 and rows["test/videos/t1.mp4"]["label"] == 1
    assert rows["test/videos/t0.mp4"]["split"] == rows["test/videos/t1.mp4"]["split"] == "test"
    assert {row["split"] for path, row in rows.items() if path.startswith("dfdc_")} <= {"train", "val"}
    reasons = {(item["path"], item["reason"]) for item in summary["skipped"]}
    assert reasons == {("dfdc_train_part_3/gone.mp4", "missing file"), ("dfdc_train_part_3/stray.mp4", "no label"),
                       ("test/t9.mp4", "missing file")}
    assert_no_leakage(rows.values())
    assert summary["split_source"] == {"kind": "official", "path": str(tmp_path.resolve() / "test/labels.csv"),
                                       "seed": 0, "official_videos": 2, "random_groups": 2}


def test_dfdc_video_in_a_folder_without_metadata_is_listed_unlabelled(tmp_path, fixtures):
    shutil.copytree(fixtures / "dfdc/dfdc_train_part_0", tmp_path / "dfdc/dfdc_train_part_0")
    place_video(tmp_path / "dfdc/dfdc_train_part_7/stray.mp4")  # a part folder whose metadata.json is absent
    result = run_cli("index", "--dataset", "dfdc", "--root", tmp_path / "dfdc", "--out", tmp_path / "d.jsonl",
                     "--quiet")
    assert result.returncode == 0, result.stderr
    assert "dfdc_train_part_7/stray.mp4: unlabelled (no metadata.json in dfdc_train_part_7)" in result.stdout
    # no labels.csv anywhere: the whole split is random, and the line says where the labels were looked for
    root = (tmp_path / "dfdc").resolve()
    assert f"split: seeded random by group (seed 0) because no official test labels.csv was found under {root}" \
        in result.stdout.splitlines()
    summary = read_json(str(tmp_path / "d.jsonl") + ".summary.json")
    assert summary["skipped_by_reason"] == {"missing file": 1, "unlabelled": 1}
    assert summary["split_source"]["kind"] == "random-by-group"
    assert [row["path"] for row in read_jsonl(tmp_path / "d.jsonl")] == ["dfdc_train_part_0/brtujopkby.mp4"]


# -------------------------------------------------------------------------------------------- Celeb-DF
def make_celebdf_tree(root, fixtures, extra_train=()):
    """A Celeb-DF v2 tree using 40 names of the real test list (its first line included), plus extras."""
    list_path = fixtures / "labels/celebdf/List_of_testing_videos.txt"
    every_line = list_path.read_text().splitlines()
    lines = every_line[:10] + every_line[130:145] + every_line[175:190]  # YouTube-real, Celeb-real, synthesis
    (root / "List_of_testing_videos.txt").write_text("\n".join(lines))  # no trailing newline, like the original
    names = [line.split(" ", 1)[1] for line in lines] + list(extra_train)
    for name in names:
        place_video(root / name)
    return lines


def test_celebdf_test_list_reading_keeps_first_line_and_inverts_labels(fixtures):
    listed = read_celebdf_test_list(fixtures / "labels/celebdf/List_of_testing_videos.txt")
    assert len(listed) == 518  # no trailing newline: `wc -l` says 517
    assert listed["YouTube-real/00170.mp4"] == 0  # the first line, '1 YouTube-real/00170.mp4': 1 = REAL
    assert sum(label == 0 for label in listed.values()) == 178
    assert all(label == 1 for name, label in listed.items() if name.startswith("Celeb-synthesis/"))


def test_celebdf_generated_tree_official_test_and_leakage_policies(tmp_path, fixtures):
    lines = make_celebdf_tree(tmp_path, fixtures, extra_train=[
        "Celeb-real/id0_0099.mp4", "Celeb-synthesis/id0_id5_0099.mp4",  # identity 0 is also in the test list
        "Celeb-real/id59_0001.mp4", "Celeb-synthesis/id59_id3_0001.mp4", "YouTube-real/99999.mp4"])
    test_identities = {name.split("/")[1].split("_")[0] for name in (line.split(" ")[1] for line in lines)
                       if not name.startswith("YouTube")}
    assert "id0" in test_identities

    with pytest.raises(DfdError, match="would be in two splits"):
        build_manifest("celebdf", tmp_path, progress=False)

    rows, summary = build_manifest("celebdf", tmp_path, leakage="exclude", progress=False)
    rows = by_path(rows)
    assert len([row for row in rows.values() if row["split"] == "test"]) == 40  # the official test set, whole
    assert rows["YouTube-real/00170.mp4"]["split"] == "test" and rows["YouTube-real/00170.mp4"]["label"] == 0
    assert "Celeb-real/id0_0099.mp4" not in rows  # identity id0 is in test: its other videos are excluded
    assert {item["reason"] for item in summary["skipped"]} == {"leaking group"}
    assert {item["path"] for item in summary["skipped"]} == {"Celeb-real/id0_0099.mp4",
                                                             "Celeb-synthesis/id0_id5_0099.mp4"}
    assert rows["Celeb-synthesis/id59_id3_0001.mp4"]["group"] == rows["Celeb-real/id59_0001.mp4"]["group"] == \
        "celebdf:id59"
    assert rows["Celeb-synthesis/id59_id3_0001.mp4"]["source_identity"] == "id3"
    assert_no_leakage(rows.values())

    reported, summary = build_manifest("celebdf", tmp_path, leakage="report", progress=False)
    assert summary["leaking_groups"]["celebdf:id0"] == ["test", "train"] or \
        summary["leaking_groups"]["celebdf:id0"] == ["test", "val"]
    assert by_path(reported)["Celeb-real/id0_0099.mp4"]["leak"] is True

    listed = str(tmp_path.resolve() / "List_of_testing_videos.txt")
    assert summary["split_source"] == {"kind": "official", "path": listed, "seed": 0, "official_videos": 40,
                                       "random_groups": 3}

    ignored, summary = build_manifest("celebdf", tmp_path, IndexOptions(official_splits=False), progress=False)
    assert len(ignored) == 45
    assert_no_leakage(ignored)
    assert summary["split_source"]["kind"] == "random-by-group" and summary["split_source"]["official_videos"] == 0
    assert summary["split_source"]["reason"] == "--no-official-splits was given"


def test_celebdf_without_its_test_list_says_so(tmp_path):
    place_video(tmp_path / "Celeb-real/id59_0001.mp4")
    place_video(tmp_path / "Celeb-synthesis/id59_id3_0001.mp4")
    place_video(tmp_path / "YouTube-real/00170.mp4")
    result = run_cli("index", "--dataset", "celebdf", "--root", tmp_path, "--out", tmp_path / "c.jsonl", "--quiet",
                     "--val-fraction", "0.3", "--test-fraction", "0.3")
    assert result.returncode == 0, result.stderr
    listed = tmp_path.resolve() / "List_of_testing_videos.txt"
    assert f"split: seeded random by group (seed 0) because the official test list was not found at {listed}" \
        in result.stdout.splitlines()
    source = read_json(str(tmp_path / "c.jsonl") + ".summary.json")["split_source"]
    assert source == {"kind": "random-by-group", "path": str(listed), "seed": 0, "official_videos": 0,
                      "random_groups": 2, "reason": f"the official test list was not found at {listed}"}


def test_celebdf_missing_listed_files_are_counted(tmp_path, fixtures):
    make_celebdf_tree(tmp_path, fixtures)
    (tmp_path / "Celeb-synthesis" / "id0_id16_0002.mp4").unlink(missing_ok=True)
    first_fake = next(p for p in sorted((tmp_path / "Celeb-synthesis").iterdir()))
    first_fake.unlink()
    rows, summary = build_manifest("celebdf", tmp_path, progress=False)
    assert summary["skipped_by_reason"] == {"missing file": 1}
    assert len(rows) == 39


# -------------------------------------------------------------------------------------- FaceForensics++
def test_ffpp_real_fixtures_official_splits_and_pairs(fixtures):
    options = IndexOptions(ffpp_splits=str(fixtures / "labels/ffpp"))
    rows, summary = build_manifest("ffpp", fixtures / "ffpp", options, progress=False)
    rows = by_path(rows)
    assert len(rows) == 6 + 5 + 24 and not summary["skipped"]
    split_of = {}
    for split in ("train", "val", "test"):
        for pair in json.loads((fixtures / f"labels/ffpp/{split}.json").read_text()):
            split_of.update({video_id: split for video_id in pair})
    for first, second in (("183", "253"), ("469", "481"), ("585", "599")):
        pair_rows = [rows[f"original_sequences/youtube/c40/videos/{first}.mp4"],
                     rows[f"original_sequences/youtube/c40/videos/{second}.mp4"]]
        for method in ("Deepfakes", "Face2Face", "FaceSwap", "NeuralTextures"):
            pair_rows += [rows[f"manipulated_sequences/{method}/c40/videos/{first}_{second}.mp4"],
                          rows[f"manipulated_sequences/{method}/c40/videos/{second}_{first}.mp4"]]
        assert len({row["group"] for row in pair_rows}) == 1
        assert {row["split"] for row in pair_rows} == {split_of[first]}
    fake = rows["manipulated_sequences/Face2Face/c40/videos/183_253.mp4"]
    assert (fake["method"], fake["compression"], fake["label"], fake["frames"]) == ("Face2Face", "c40", 1, 501)
    assert fake["key"] == "ffpp_Face2Face_c40_183_253"
    actors = [row for path, row in rows.items() if "/actors/" in path]
    assert {row["group"] for row in actors} == {"ffpp:actor01", "ffpp:actor06", "ffpp:actor07", "ffpp:actor08"}
    assert_no_leakage(rows.values())


def test_ffpp_generated_tree_pair_order_is_arbitrary(tmp_path, fixtures):
    for video_id in ("515", "519", "071", "054"):
        place_video(tmp_path / f"original_sequences/youtube/c23/videos/{video_id}.mp4")
    place_video(tmp_path / "manipulated_sequences/Deepfakes/c23/videos/519_515.mp4")
    place_video(tmp_path / "manipulated_sequences/FaceSwap/c23/videos/054_071.mp4")
    place_video(tmp_path / "manipulated_sequences/Deepfakes/c40/videos/519_515.mp4")
    place_video(tmp_path / "original_sequences/actors/c23/videos/02__walking.mp4")
    place_video(tmp_path / "manipulated_sequences/DeepFakeDetection/c23/videos/02_13__walking__ABCD1234.mp4")
    splits = tmp_path / "splits"
    splits.mkdir()
    for split in ("train", "val", "test"):
        shutil.copy(fixtures / f"labels/ffpp/{split}.json", splits / f"{split}.json")

    rows = by_path(build_manifest("ffpp", tmp_path, IndexOptions(compressions=("c23",)), progress=False)[0])
    assert len(rows) == 8  # c40 filtered out
    assert rows["manipulated_sequences/Deepfakes/c23/videos/519_515.mp4"]["split"] == "train"  # pair ["515","519"]
    assert rows["original_sequences/youtube/c23/videos/515.mp4"]["group"] == \
        rows["manipulated_sequences/Deepfakes/c23/videos/519_515.mp4"]["group"]
    assert rows["manipulated_sequences/FaceSwap/c23/videos/054_071.mp4"]["split"] == "train"  # ["071","054"]
    dfd_fake = rows["manipulated_sequences/DeepFakeDetection/c23/videos/02_13__walking__ABCD1234.mp4"]
    assert dfd_fake["group"] == rows["original_sequences/actors/c23/videos/02__walking.mp4"]["group"] == "ffpp:actor02"
    assert_no_leakage(rows.values())


def test_ffpp_cli_says_which_split_source_was_used(tmp_path, fixtures):
    lists = fixtures / "labels/ffpp"
    official = run_cli("index", "--dataset", "ffpp", "--root", fixtures / "ffpp", "--out", tmp_path / "o.jsonl",
                       "--quiet", "--ffpp-splits", lists, "--workers", "2")
    assert official.returncode == 0, official.stderr
    assert f"split: official lists at {lists} (30 videos); the other 4 groups split at random (seed 0)" in \
        official.stdout.splitlines()
    assert read_json(str(tmp_path / "o.jsonl") + ".summary.json")["split_source"] == {
        "kind": "official", "path": str(lists), "seed": 0, "official_videos": 30, "random_groups": 4}

    # the fixture tree holds no train.json: the split is random, and the line names both places looked at
    guessed = run_cli("index", "--dataset", "ffpp", "--root", fixtures / "ffpp", "--out", tmp_path / "r.jsonl",
                      "--quiet", "--workers", "2", "--seed", "5", "--json")
    assert guessed.returncode == 0, guessed.stderr
    root = (fixtures / "ffpp").resolve()
    source = json.loads(guessed.stdout)["split_source"]
    assert source == {"kind": "random-by-group", "path": str(root / "splits"), "seed": 5, "official_videos": 0,
                      "random_groups": 7, "reason": "the official lists were not found at "
                                                    f"{root}/splits/train.json or {root}/train.json"}
    assert read_json(str(tmp_path / "r.jsonl") + ".summary.json")["split_source"] == source


# ---------------------------------------------------------------------------------------------- folder
def test_folder_layout_persons_images_and_non_media(tmp_path):
    from PIL import Image

    place_video(tmp_path / "real/alice/a.mp4")
    place_video(tmp_path / "fake/alice/a_swap.mp4")
    place_video(tmp_path / "real/loose.mp4")
    (tmp_path / "fake/bob").mkdir(parents=True)
    Image.new("RGB", (40, 30), (200, 150, 120)).save(tmp_path / "fake/bob/still.png")
    (tmp_path / "fake/notes.txt").write_text("not a video")
    rows, summary = build_manifest("folder", tmp_path, progress=False)
    rows = by_path(rows)
    assert rows["real/alice/a.mp4"]["group"] == rows["fake/alice/a_swap.mp4"]["group"] == "folder:alice"
    assert rows["real/loose.mp4"]["group"] == "folder:loose"
    still = rows["fake/bob/still.png"]
    assert (still["frames"], still["width"], still["height"], still["label"]) == (1, 40, 30, 1)
    assert summary["skipped"] == [{"path": "fake/notes.txt", "reason": "not a video", "detail": "unknown file extension"}]
    assert summary["split_source"]["kind"] == "random-by-group" and summary["split_source"]["path"] is None

    regex_rows = by_path(build_manifest("folder", tmp_path, IndexOptions(group_regex=r"/(\w)"), progress=False)[0])
    assert regex_rows["real/alice/a.mp4"]["group"] == "folder:a"


def test_folder_name_names_rows_keys_and_groups(tmp_path):
    for name in ("studio", "street"):  # two folder sets with the same layout and person names
        place_video(tmp_path / name / "real/alice/a.mp4")
        place_video(tmp_path / name / "fake/alice/a_swap.mp4")
    manifests = {}
    for name in ("studio", "street"):
        result = run_cli("index", "--dataset", "folder", "--root", tmp_path / name, "--out", tmp_path / f"{name}.jsonl",
                         "--name", name, "--quiet", "--val-fraction", "0", "--test-fraction", "0")
        assert result.returncode == 0, result.stderr
        assert f"train  {name:<9}       1       1" in result.stdout.splitlines()
        manifests[name] = by_path(read_jsonl(tmp_path / f"{name}.jsonl"))
    studio = manifests["studio"]["real/alice/a.mp4"]
    assert (studio["dataset"], studio["key"], studio["group"]) == ("studio", "studio_real_alice_a", "studio:alice")
    keys = [{row["key"] for row in rows.values()} for rows in manifests.values()]
    groups = [{row["group"] for row in rows.values()} for rows in manifests.values()]
    assert not keys[0] & keys[1] and not groups[0] & groups[1]
    assert by_path(build_manifest("folder", tmp_path / "studio", progress=False)[0])["real/alice/a.mp4"]["key"] == \
        "folder_real_alice_a"  # without a name: as before


def test_small_dataset_gets_a_group_in_every_requested_split(tmp_path):
    for person in ("p1", "p2", "p3"):
        place_video(tmp_path / f"data/real/{person}/a.mp4")
        place_video(tmp_path / f"data/fake/{person}/a.mp4")
    # 10% of 3 groups rounds to none: val and test still get one group each, train keeps one
    result = run_cli("index", "--dataset", "folder", "--root", tmp_path / "data", "--out", tmp_path / "m.jsonl",
                     "--quiet")
    assert result.returncode == 0, result.stderr
    rows = read_jsonl(tmp_path / "m.jsonl")
    assert collections.Counter(row["split"] for row in rows) == {"train": 2, "val": 2, "test": 2}
    assert_no_leakage(rows)
    assert "warning" not in result.stdout
    assert read_json(str(tmp_path / "m.jsonl") + ".summary.json")["empty_splits"] == []

    # 2 groups: train keeps one, val gets the other, test none: one warning line, recorded in the summary
    shutil.rmtree(tmp_path / "data/real/p3")
    shutil.rmtree(tmp_path / "data/fake/p3")
    result = run_cli("index", "--dataset", "folder", "--root", tmp_path / "data", "--out", tmp_path / "m.jsonl",
                     "--quiet")
    assert result.returncode == 0, result.stderr
    assert {row["split"] for row in read_jsonl(tmp_path / "m.jsonl")} == {"train", "val"}
    warnings = [line for line in result.stdout.splitlines() if line.startswith("warning")]
    assert warnings == ["warning: no videos in test: 2 group(s) to split are too few to give every requested split "
                        "one (see --val-fraction, --test-fraction)"]
    assert read_json(str(tmp_path / "m.jsonl") + ".summary.json")["empty_splits"] == ["test"]
    as_json = run_cli("index", "--dataset", "folder", "--root", tmp_path / "data", "--out", tmp_path / "j.jsonl",
                      "--quiet", "--json")
    assert json.loads(as_json.stdout)["empty_splits"] == ["test"] and warnings[0] in as_json.stderr


def test_bad_videos_are_skipped_with_reasons(tmp_path):
    data = SMALL_CLIP.read_bytes()
    place_video(tmp_path / "real/good.mp4")
    (tmp_path / "real/zero.mp4").write_bytes(b"")
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake/truncated.mp4").write_bytes(data[: len(data) // 2])
    (tmp_path / "fake/corrupt.mp4").write_bytes(data[:32] + bytes(4096) + data[4128:])
    (tmp_path / "fake/text.mp4").write_text("this is a text file renamed to .mp4\n" * 20)
    rows, summary = build_manifest("folder", tmp_path, progress=False)
    assert [row["path"] for row in rows] == ["real/good.mp4"]
    reasons = {item["path"]: item["reason"] for item in summary["skipped"]}
    assert reasons == {"real/zero.mp4": "zero-length", "fake/truncated.mp4": "truncated",
                       "fake/corrupt.mp4": "undecodable", "fake/text.mp4": "undecodable"}


def test_dangling_symlinks_are_listed_as_missing(tmp_path, fixtures):
    place_video(tmp_path / "data/real/good.mp4")
    place_video(tmp_path / "data/fake/good_swap.mp4")
    (tmp_path / "data/fake/gone.mp4").symlink_to(tmp_path / "elsewhere/gone.mp4")
    result = run_cli("index", "--dataset", "folder", "--root", tmp_path / "data", "--out", tmp_path / "m.jsonl",
                     "--quiet")
    assert result.returncode == 0, result.stderr
    assert f"fake/gone.mp4: missing file (dangling symlink to {tmp_path}/elsewhere/gone.mp4)" in result.stdout
    assert sorted(row["path"] for row in read_jsonl(tmp_path / "m.jsonl")) == ["fake/good_swap.mp4", "real/good.mp4"]

    # the FF++ layout walks its own folders: a link to nothing there is missing too
    videos = tmp_path / "ffpp/original_sequences/youtube/c40/videos"
    place_video(videos / "183.mp4")
    (videos / "253.mp4").symlink_to(fixtures / "no/such/253.mp4")
    rows, summary = build_manifest("ffpp", tmp_path / "ffpp", progress=False)
    assert [row["path"] for row in rows] == ["original_sequences/youtube/c40/videos/183.mp4"]
    assert summary["skipped"] == [{"path": "original_sequences/youtube/c40/videos/253.mp4", "reason": "missing file",
                                   "detail": f"dangling symlink to {fixtures}/no/such/253.mp4"}]


def test_the_walk_is_sorted_rglob_and_colliding_keys_are_told_apart(tmp_path):
    """The walk yields, one path at a time, what sorted(rglob) gives (names that sort apart as strings and as path
    parts, hidden and non-ASCII names, a symlinked file and a dangling link in, a symlinked folder not followed);
    keys that sanitise alike get their path's hash, the others stay; one probe process and two write the same."""
    root = tmp_path / "data"
    for relative in ("real/a-c.mp4", "real/a/b.mp4", "real/a.b.mp4", "real/a-b.mp4", "real/A/z.mp4",
                     "real/\u00e9/x.mp4", "real/.hidden/x.mp4", "fake/a/b.mp4", "fake/a b/c.mp4"):
        place_video(root / relative)
    (root / "real/linked").symlink_to(root / "real/a")
    (root / "fake/link.mp4").symlink_to(root / "real/a-c.mp4")
    (root / "fake/gone.mp4").symlink_to(tmp_path / "nowhere.mp4")
    walked = list(walk_files(root))
    assert walked == sorted(path for path in root.rglob("*") if is_file_or_dangling(path))
    assert root / "fake/gone.mp4" in walked and not any("linked" in str(path) for path in walked)

    one, summary = build_manifest("folder", root, progress=False)
    assert build_manifest("folder", root, workers=2, progress=False)[0] == one
    in_walk_order = [*walk_files(root / "real"), *walk_files(root / "fake")]  # the folder layout walks real/ first
    assert [row["path"] for row in one] == [path.relative_to(root).as_posix() for path in in_walk_order
                                           if path.name != "gone.mp4"]
    assert summary["skipped"] == [{"path": "fake/gone.mp4", "reason": "missing file",
                                   "detail": f"dangling symlink to {tmp_path}/nowhere.mp4"}]
    keys = {row["path"]: row["key"] for row in one}
    for path in ("real/a.b.mp4", "real/a-b.mp4"):  # both "folder_real_a-b"
        assert keys[path] == "folder_real_a-b-" + hashlib.sha1(path.encode()).hexdigest()[:8]
    assert keys["real/a-c.mp4"] == "folder_real_a-c" and keys["fake/a b/c.mp4"] == "folder_fake_a-b_c"
    assert len(set(keys.values())) == len(keys)


def test_face_boxes_from_a_file_go_into_the_rows_and_the_shards(tmp_path):
    """index --face-boxes: a video's boxes become its row's ``faces`` (the stored-boxes form), the shard's sample
    carries them and crops at the face; boxes that miss the frame skip the video by name; videos without an
    entry and entries without a video are counted; new boxes rewrite the shard; a bad file is one line, before
    any probe."""
    for relative in ("real/a/x.mp4", "fake/a/y.mp4", "real/b/z.mp4"):
        place_video(tmp_path / "data" / relative)  # 1280x720, 390 frames
    entries = [{"path": "real/a/x.mp4", "frames": [0, 200], "boxes": [[500, 200, 700, 450], None]},
               {"path": "fake/a/y.mp4", "frames": [3], "boxes": [[1300, 100, 1400, 200]]},  # right of the frame
               {"path": "real/gone.mp4", "frames": [0], "boxes": [[1, 1, 2, 2]]}]
    boxes_file = tmp_path / "boxes.jsonl"
    boxes_file.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    result = run_cli("index", "--dataset", "folder", "--root", tmp_path / "data", "--out", tmp_path / "m.jsonl",
                     "--face-boxes", boxes_file, "--val-fraction", "0", "--test-fraction", "0", "--quiet")
    assert result.returncode == 0, result.stderr
    assert (f"face boxes from {boxes_file}: 1 videos; 1 without an entry (cropped at the centre unless shard --faces "
            f"detects); 1 entries name no indexed video (e.g. 'real/gone.mp4')") in result.stdout
    rows = by_path(read_jsonl(tmp_path / "m.jsonl"))
    assert sorted(rows) == ["real/a/x.mp4", "real/b/z.mp4"] and "faces" not in rows["real/b/z.mp4"]
    assert rows["real/a/x.mp4"]["faces"] == {"detector": "file", "frames": [0, 200],
                                             "boxes": [[[500, 200, 700, 450]], []], "frames_without_face": 1}
    summary = read_json(str(tmp_path / "m.jsonl") + ".summary.json")
    assert summary["skipped"] == [{"path": "fake/a/y.mp4", "reason": "bad face boxes",
                                   "detail": f"no box of {boxes_file} is inside its 1280x720 frames"}]
    assert summary["face_boxes"] == {"file": str(boxes_file), "entries": 3, "videos": 1, "videos_without": 1,
                                     "unmatched_entries": 1, "example_unmatched": "real/gone.mp4"}

    def sample_meta(shards):
        with tarfile.open(shards / "train-000000.tar") as tar:
            samples = [json.loads(tar.extractfile(member).read()) for member in tar if member.name.endswith(".json")]
        return {meta["path"]: meta for meta in samples}

    write_shards(tmp_path / "m.jsonl", tmp_path / "shards", progress=False)
    meta = sample_meta(tmp_path / "shards")["real/a/x.mp4"]
    regions, from_face = crop_regions(meta, [0, 100, 300], 1280, 720, mode="face")
    half = 250 * (1 + 2 / 3) / 2  # the box's longer side grown by a third on each side, made square
    assert from_face and regions[0].tolist() == pytest.approx([600 - half, 325 - half, 600 + half, 325 + half])
    assert crop_regions(sample_meta(tmp_path / "shards")["real/b/z.mp4"], [0], 1280, 720, mode="face")[1] is False

    entries[0]["boxes"][1] = [510, 200, 710, 450]  # new boxes: the shard that holds the video is written again
    boxes_file.write_text("".join(json.dumps(entry) + "\n" for entry in entries))
    build = build_manifest("folder", tmp_path / "data", val_fraction=0, test_fraction=0, progress=False,
                           face_boxes=boxes_file)
    again = write_shards(build[0], tmp_path / "shards", progress=False)
    assert again["totals"]["resumed_shards"] == 0
    assert sample_meta(tmp_path / "shards")["real/a/x.mp4"]["faces"]["boxes"][1] == [[510, 200, 710, 450]]

    for text, message in [("{\n", "boxes.jsonl:1: not a JSON line"), ('"x"\n', "boxes.jsonl:1: not a JSON object"),
                          ('{"path": "a", "frames": [2, 1], "boxes": [null, null]}\n', "'frames' must be increasing"),
                          ('{"path": "a", "frames": [0], "boxes": []}\n', "one box (or null) per frame: 1 frames"),
                          ('{"path": "a", "frames": [0], "boxes": [[0, 0, NaN, 5]]}\n', "(finite numbers)"),
                          ('{"path": "a", "frames": [0], "boxes": [[4, 0, 4, 5]]}\n', "frame 0 is empty"),
                          ('{"path": "a", "frames": [0], "boxes": [null]}\n' * 2, "'a' is listed twice")]:
        boxes_file.write_text(text)
        bad = run_cli("index", "--dataset", "folder", "--root", tmp_path / "data", "--out", tmp_path / "bad.jsonl",
                      "--face-boxes", boxes_file, "--quiet")
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and message in bad.stderr, bad.stderr
        assert not (tmp_path / "bad.jsonl").exists()
    missing = run_cli("index", "--dataset", "folder", "--root", tmp_path / "data", "--out", tmp_path / "bad.jsonl",
                      "--face-boxes", tmp_path / "none.jsonl")
    assert missing.returncode == 2 and "none.jsonl: cannot read the face-box file" in missing.stderr


# ------------------------------------------------------------------------------------------------- CLI
def test_index_cli_writes_manifest_summary_and_json(tmp_path, fixtures):
    out = tmp_path / "m.jsonl"
    result = run_cli("index", "--dataset", "ffpp", "--root", fixtures / "ffpp", "--out", out, "--json", "--quiet",
                     "--ffpp-splits", fixtures / "labels/ffpp", "--workers", "2")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["videos"] == 35 and summary["manifest"] == str(out)
    rows = read_jsonl(out)
    assert len(rows) == 35 and {"key", "path", "label", "dataset", "group", "split", "frames", "fps"} <= set(rows[0])
    assert read_json(str(out) + ".summary.json")["videos"] == 35

    table = run_cli("index", "--dataset", "dfdc", "--root", fixtures / "dfdc", "--out", tmp_path / "d.jsonl", "--quiet")
    assert table.returncode == 0 and "missing file: 6" in table.stdout


def test_index_summary_names_the_dataset_the_rows_name(tmp_path):
    """folder --name celeb: the summary (printed JSON and the .summary.json file) says "celeb", as the rows do; the
    layout it was read as is "folder"."""
    place_video(tmp_path / "data/real/alice/a.mp4")
    place_video(tmp_path / "data/fake/alice/b.mp4")
    out = tmp_path / "celeb.jsonl"
    result = run_cli("index", "--dataset", "folder", "--name", "celeb", "--root", tmp_path / "data", "--out", out,
                     "--json", "--quiet", "--val-fraction", "0", "--test-fraction", "0")
    assert result.returncode == 0, result.stderr
    for summary in (json.loads(result.stdout), read_json(str(out) + ".summary.json")):
        assert (summary["dataset"], summary.get("layout")) == ("celeb", "folder")
    assert {row["dataset"] for row in read_jsonl(out)} == {"celeb"}


def test_ffpp_compression_says_how_many_videos_it_left_out(tmp_path):
    """--compression c23 on a tree that also holds c40 and raw videos: one line and the summary count them."""
    for compression in ("c23", "c40", "raw"):
        place_video(tmp_path / f"original_sequences/youtube/{compression}/videos/515.mp4")
        place_video(tmp_path / f"manipulated_sequences/Deepfakes/{compression}/videos/519_515.mp4")
    place_video(tmp_path / "manipulated_sequences/FaceSwap/c40/videos/054_071.mp4")
    common = ("index", "--dataset", "ffpp", "--root", tmp_path, "--quiet", "--compression", "c23")
    table = run_cli(*common, "--out", tmp_path / "t.jsonl")
    assert table.returncode == 0, table.stderr
    assert "excluded by --compression: 5 videos (c40: 3, raw: 2)" in table.stdout.splitlines(), table.stdout
    summary = json.loads(run_cli(*common, "--out", tmp_path / "j.jsonl", "--json").stdout)
    assert summary["videos"] == 2 and summary["excluded"] == {"compression": {"c40": 3, "raw": 2}}
    everything = run_cli("index", "--dataset", "ffpp", "--root", tmp_path, "--quiet", "--out", tmp_path / "a.jsonl")
    assert everything.returncode == 0 and "excluded" not in everything.stdout


@pytest.mark.parametrize("args, message", [
    (["--dataset", "kaggle", "--root", ".", "--out", "x.jsonl"], "invalid choice: 'kaggle'"),
    (["--dataset", "dfdc", "--root", "/no/such/folder", "--out", "x.jsonl"], "/no/such/folder"),
    (["--dataset", "folder", "--root", "."], "--out"),
    (["--dataset", "dfdc", "--root", ".", "--out", "x.jsonl", "--val-fraction", "1.5"], "--val-fraction"),
    (["--dataset", "folder", "--root", ".", "--out", "x.jsonl", "--name", "my set"], "short identifier"),
    (["--dataset", "folder", "--root", ".", "--out", "x.jsonl", "--name", "my_set"], "short identifier"),
    (["--dataset", "dfdc", "--root", ".", "--out", "x.jsonl", "--name", "mine"], "--name applies to --dataset folder"),
])
def test_index_cli_bad_arguments_exit_2_with_one_line(tmp_path, args, message):
    result = run_cli("index", *args, cwd=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
