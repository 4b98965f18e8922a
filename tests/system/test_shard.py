"""dfdtrain shard: byte-identical round trip through real tars and readers, bad videos, resume, faces."""

import collections
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pytest

from support import SIX_VIDEOS, SMALL_CLIP, place_video, read_back, run_cli, six_video_manifest
from dfdtrain.data.decode.dali_tar_index import dali_index_path
from dfdtrain.data.ingest.manifest import build_manifest, load_manifest, write_manifest
from dfdtrain.data.ingest.datasets import IndexOptions
from dfdtrain.data.ingest.splits import leaking_groups
from dfdtrain.data.shards.manifest_rows import ManifestRows
from dfdtrain.data.shards.plan import plan_hash, plan_shards
from dfdtrain.data.shards.writer import write_shards
from dfdtrain.core.errors import DfdError
from dfdtrain.core.fileio import read_json, read_jsonl
from dfdtrain.core.locks import DirectoryLocked


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_round_trip_is_byte_identical_with_labels(tmp_path, ffpp_manifest):
    rows = read_jsonl(ffpp_manifest)
    index = write_shards(ffpp_manifest, tmp_path, target_bytes=1_500_000, progress=False)
    shard_paths = sorted(tmp_path.glob("*.tar"))
    assert len(shard_paths) == index["totals"]["shards"] >= 4  # ~9.7 MB in 1.5 MB shards, per split
    assert {path.name.split("-")[0] for path in shard_paths} == {row["split"] for row in rows}
    samples = read_back(shard_paths)
    assert set(samples) == {row["key"] for row in rows}
    for row in rows:
        video, meta = samples[row["key"]]
        assert video == open(os.path.join(row["root"], row["path"]), "rb").read()
        assert (meta["label"], meta["group"], meta["split"], meta["frames"]) == \
            (row["label"], row["group"], row["split"], row["frames"])
    for shard in index["shards"]:
        path = tmp_path / shard["name"]
        assert shard["sha256"] == sha256(path) and shard["bytes"] == path.stat().st_size
        assert shard["name"].startswith(shard["split"] + "-")
        in_shard = [meta for _, meta in read_back([path]).values()]
        assert len(in_shard) == shard["samples"]
        assert {split for split in (meta["split"] for meta in in_shard)} == {shard["split"]}
        assert (tmp_path / shard["dali_index"]).is_file()
        assert shard["keys"] == list(read_back([path]))  # the sample keys, in tar order
    assert index["totals"]["samples"] == len(rows) and index["skipped"] == []
    # the sample order inside shards is shuffled, not the manifest's order (seen in the fullest first shard)
    fullest = max((shard for shard in index["shards"] if shard["name"].endswith("-000000.tar")),
                  key=lambda shard: shard["samples"])
    split_rows = [row["key"] for row in rows if row["split"] == fullest["split"]]
    assert fullest["samples"] >= 3 and fullest["keys"] != split_rows[:fullest["samples"]]


def test_dali_reads_our_shards(tmp_path, ffpp_manifest):
    dali = pytest.importorskip("nvidia.dali")
    from nvidia.dali import fn, pipeline_def

    write_shards(ffpp_manifest, tmp_path, target_bytes=3_000_000, progress=False)
    shard_paths = sorted(str(path) for path in tmp_path.glob("train-*.tar"))
    expected = read_back(shard_paths)

    @pipeline_def(batch_size=1, num_threads=1, device_id=None)
    def reader():
        video, meta = fn.readers.webdataset(paths=shard_paths, index_paths=[dali_index_path(p) for p in shard_paths],
                                            ext=["mp4", "json"], missing_component_behavior="error")
        return video, meta

    pipe = reader()
    pipe.build()
    seen = {}
    for _ in range(len(expected)):
        video, meta = pipe.run()
        meta = json.loads(bytes(meta.at(0)).decode())
        seen[meta["key"]] = bytes(video.at(0))
    assert dali.__version__ and seen == {key: video for key, (video, _) in expected.items()}


def test_bad_videos_are_skipped_counted_and_the_rest_kept(tmp_path):
    data_root = tmp_path / "data"
    for name in ("good1", "good2", "zero", "trunc", "corrupt"):
        place_video(data_root / "real" / f"{name}.mp4")
    place_video(data_root / "fake" / "good3.mp4")
    rows, summary = build_manifest("folder", data_root, IndexOptions(), val_fraction=0, test_fraction=0,
                                   progress=False)
    assert len(rows) == 6
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, rows, summary)
    # the files go bad after indexing: the shard stage re-checks the bytes it stores
    clip = SMALL_CLIP.read_bytes()
    (data_root / "real/zero.mp4").write_bytes(b"")
    (data_root / "real/trunc.mp4").write_bytes(clip[: len(clip) * 2 // 3])
    (data_root / "real/corrupt.mp4").write_bytes(clip[:32] + b"\xa5" * 2048 + clip[2080:])
    index = write_shards(manifest, tmp_path / "shards", progress=False)
    reasons = {os.path.basename(item["path"]): item["reason"] for item in index["skipped"]}
    assert reasons == {"zero.mp4": "zero-length", "trunc.mp4": "truncated", "corrupt.mp4": "undecodable"}
    assert index["totals"]["samples"] == 3 and index["totals"]["skipped"] == 3
    assert set(read_back(sorted((tmp_path / "shards").glob("*.tar")))) == \
        {"folder_real_good1", "folder_real_good2", "folder_fake_good3"}


def test_a_shard_whose_every_video_is_skipped_is_written_empty(tmp_path):
    from dfdtrain.data.decode.dali_shards import is_empty_tar

    data_root = tmp_path / "data"
    place_video(data_root / "real" / "good.mp4")
    place_video(data_root / "fake" / "zero.mp4")
    rows, summary = build_manifest("folder", data_root, IndexOptions(), val_fraction=0, test_fraction=0,
                                   progress=False)
    write_manifest(tmp_path / "m.jsonl", rows, summary)
    (data_root / "fake/zero.mp4").write_bytes(b"")
    index = write_shards(tmp_path / "m.jsonl", tmp_path / "shards", target_bytes=1, progress=False)  # 1 video a shard
    assert index["totals"]["samples"] == 1 and index["totals"]["skipped"] == 1
    tars = sorted((tmp_path / "shards").glob("*.tar"))
    empty = [tar for tar in tars if is_empty_tar(tar)]
    assert len(tars) == 2 and len(empty) == 1
    assert not os.path.exists(dali_index_path(empty[0]))  # DALI refuses an empty index; its pipeline skips the tar
    assert set(read_back(tars)) == {"folder_real_good"}


def test_rerun_resumes_and_rewrites_only_missing_shards(tmp_path, ffpp_manifest):
    first = write_shards(ffpp_manifest, tmp_path, target_bytes=1_500_000, progress=False)
    # a finished run leaves no .parts/: index.json holds each shard's record, plan hash included
    assert not (tmp_path / ".parts").exists() and all(len(shard["plan_hash"]) == 64 for shard in first["shards"])
    stamps = {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in tmp_path.glob("*.tar")}
    again = write_shards(ffpp_manifest, tmp_path, target_bytes=1_500_000, progress=False)
    assert again["totals"]["resumed_shards"] == first["totals"]["shards"]
    assert stamps == {path.name: (path.stat().st_ino, path.stat().st_mtime_ns) for path in tmp_path.glob("*.tar")}

    # a crash mid-shard leaves no final tar (only a temp file): the next run writes that shard again
    lost = first["shards"][1]["name"]
    (tmp_path / lost).unlink()
    (tmp_path / f".{lost}.123.tmp").write_bytes(b"half a shard")
    third = write_shards(ffpp_manifest, tmp_path, target_bytes=1_500_000, progress=False)
    assert third["totals"]["resumed_shards"] == first["totals"]["shards"] - 1
    assert sha256(tmp_path / lost) == first["shards"][1]["sha256"]  # same plan, same bytes

    # a different plan (another shard size) replaces the old shards, leaving no stale ones behind
    fourth = write_shards(ffpp_manifest, tmp_path, target_bytes=4_000_000, progress=False)
    assert sorted(path.name for path in tmp_path.glob("*.tar")) == sorted(s["name"] for s in fourth["shards"])
    assert len(fourth["shards"]) < len(first["shards"])


def test_parallel_workers_write_the_same_shards(tmp_path, ffpp_manifest):
    serial = write_shards(ffpp_manifest, tmp_path / "serial", target_bytes=2_000_000, progress=False)
    parallel = write_shards(ffpp_manifest, tmp_path / "parallel", target_bytes=2_000_000, workers=2, progress=False)
    assert [s["sha256"] for s in serial["shards"]] == [s["sha256"] for s in parallel["shards"]]


def test_plan_is_seeded_and_respects_target_size():
    rows = [{"key": f"k{i}", "split": "train" if i % 4 else "val", "bytes": 100} for i in range(40)]
    plan = plan_shards(rows, target_bytes=1000, seed=1)
    assert plan.names == ["train-000000.tar", "train-000001.tar", "train-000002.tar", "val-000000.tar"]
    assert all(sum(row["bytes"] for row in plan.rows(shard)) <= 1000 for shard in plan)
    assert plan_shards(rows, 1000, seed=1).shards == plan.shards
    assert plan_shards(rows, 1000, seed=2).shards != plan.shards


def reference_plan(rows, target_bytes, seed):
    """The plan as specified, over rows held in memory: [(name, [key])]: per split (train, val, test, then the
    others by name), its rows sorted by key, shuffled by Random("seed:split"), packed up to target_bytes."""
    by_split = collections.defaultdict(list)
    for row in rows:
        by_split[row["split"]].append(row)
    splits = [split for split in ("train", "val", "test") if split in by_split]
    plan = []
    for split in splits + sorted(set(by_split) - set(splits)):
        members = sorted(by_split[split], key=lambda row: row["key"])
        random.Random(f"{seed}:{split}").shuffle(members)
        shards = [[]]
        for row in members:
            if shards[-1] and sum(r.get("bytes") or 0 for r in shards[-1]) + (row.get("bytes") or 0) > target_bytes:
                shards.append([])
            shards[-1].append(row)
        plan += [(f"{split}-{number:06d}.tar", [row["key"] for row in shard]) for number, shard in enumerate(shards)]
    return plan


def test_the_plan_read_from_a_manifest_file_is_the_plan_of_its_rows(tmp_path):
    """A run holds per row only its key, split, bytes and line offset (ManifestRows) and reads whole rows back a
    shard at a time: the plan, its plan hashes and the leak check are those of the rows held in memory."""
    rng = random.Random(5)
    rows = [{"key": f"v{rng.randrange(10**6):06d}-{i}", "path": f"d/{i}.mp4", "root": "/data", "label": i % 2,
             "dataset": "folder", "group": f"g{i // 3}", "split": rng.choice(["train", "train", "val", "test", "x"]),
             "note": "\u00e9", **({} if i % 50 == 7 else {"bytes": rng.randrange(1, 5000)})} for i in range(300)]
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    (tmp_path / "m.jsonl").write_text("\n".join(lines[:100] + ["", "  "] + lines[100:]) + "\n", encoding="utf-8")
    manifest = ManifestRows.read(tmp_path / "m.jsonl")
    options = {"store": "original", "seed": 3}
    for target in (1, 20_000, 10**9):
        from_file, from_rows = plan_shards(manifest, target, seed=3), plan_shards(rows, target, seed=3)
        expected = reference_plan(rows, target, seed=3)
        assert [(shard.name, from_file.keys(shard)) for shard in from_file] == expected
        assert [(shard.name, [row["key"] for row in from_rows.rows(shard)]) for shard in from_rows] == expected
        assert [from_file.rows(shard) for shard in from_file] == [from_rows.rows(shard) for shard in from_rows]
        assert from_file.hashes(options) == from_rows.hashes(options) == {
            shard.name: plan_hash(from_rows.rows(shard), options) for shard in from_rows}
    assert manifest.leaking_groups() == leaking_groups(rows) != {}
    (tmp_path / "m.jsonl").write_text("\n".join(lines[1:]) + "\n", encoding="utf-8")  # changed under the run
    with pytest.raises(DfdError, match="changed while being sharded"):
        from_file.rows(from_file[0])


def test_keys_are_planned_as_python_sorts_them_and_duplicates_refused_as_load_manifest_does(tmp_path):
    """The plan's key order is Python's whatever the keys hold: non-ASCII, a prefix of another, NULs (the
    fixed-width sort pads with NUL: sorted as strings then), one very long key among 300 short ones (too uneven
    to pad: sorted as strings); a key on several rows is the error load_manifest gives, naming the first such key in file order."""
    base = ["b", "a", "ab", "a\u00e9", "\u4e2d", "a-b", "A", "", "zz", "b0"]
    cases = {"plain": base, "nul": base + ["a\u0000", "a\u0000\u0000"], "long": base + [f"k{i}" for i in range(300)] + ["y" * 5000]}
    for name, keys in cases.items():
        rows = [{"key": key, "path": f"{i}.mp4", "root": "/", "label": 0, "dataset": "d", "group": f"g{i}",
                 "split": "train" if i % 3 else "val", "bytes": 10 + i} for i, key in enumerate(keys)]
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
        plan = plan_shards(ManifestRows.read(tmp_path / f"{name}.jsonl"), target_bytes=40, seed=2)
        assert [(shard.name, plan.keys(shard)) for shard in plan] == reference_plan(rows, 40, seed=2), name
    row = {"path": "a.mp4", "root": "/", "label": 0, "dataset": "d", "group": "g", "split": "train"}
    for keys in (["z", "a", "a", "z", "m"], ["k\u0000", "b", "k\u0000", "b", "b"]):
        (tmp_path / "twice.jsonl").write_text("".join(json.dumps({**row, "key": key}) + "\n" for key in keys))
        with pytest.raises(DfdError) as loaded:
            load_manifest(tmp_path / "twice.jsonl")
        with pytest.raises(DfdError) as planned:
            ManifestRows.read(tmp_path / "twice.jsonl")
        assert str(planned.value) == str(loaded.value) and "2 key(s)" in str(loaded.value)
        assert repr(keys[0]) in str(loaded.value)


@pytest.mark.parametrize("text", [b"", b"\n  \n", b'{"key": 1}\n', b"[1]\n", b'{"a": 1}\n{"b"\n',
                                  b"\xff\xfe\n", b'"row"\n{"key"', b"{}\n" * 3])
def test_a_bad_manifest_is_the_same_one_line_error_for_a_shard_run(tmp_path, text):
    row = {"key": "a", "path": "a.mp4", "root": "/", "label": 0, "dataset": "d", "group": "g", "split": "train"}
    cases = {"bad": text, "duplicate": (json.dumps(row) + "\n" + json.dumps({**row, "path": "b"}) + "\n").encode()}
    for name, data in cases.items():
        (tmp_path / f"{name}.jsonl").write_bytes(data)
        with pytest.raises(DfdError) as loaded:
            load_manifest(tmp_path / f"{name}.jsonl")
        with pytest.raises(DfdError) as indexed:
            ManifestRows.read(tmp_path / f"{name}.jsonl")
        assert str(indexed.value) == str(loaded.value)


def test_leaking_manifest_is_refused(tmp_path, ffpp_manifest):
    rows = read_jsonl(ffpp_manifest)
    rows[0]["split"] = "test" if rows[0]["split"] != "test" else "train"
    with pytest.raises(DfdError, match="more than one split"):
        write_shards(rows, tmp_path, progress=False)


def test_faces_are_detected_and_stored_per_frame(tmp_path, fixtures):
    pytest.importorskip("facenet_pytorch")
    place_video(tmp_path / "data/real/183.mp4")
    place_video(tmp_path / "data/fake/183_253.mp4", fixtures / "ffpp/manipulated_sequences/Deepfakes/c40/videos/183_253.mp4")
    rows, summary = build_manifest("folder", tmp_path / "data", IndexOptions(), val_fraction=0, test_fraction=0,
                                   progress=False)
    write_manifest(tmp_path / "m.jsonl", rows, summary)
    result = run_cli("shard", "--manifest", tmp_path / "m.jsonl", "--out", tmp_path / "shards", "--faces", "mtcnn",
                     "--face-frames", "4", "--json", "--quiet")
    assert result.returncode == 0, result.stderr
    samples = read_back(sorted((tmp_path / "shards").glob("*.tar")))
    for _, meta in samples.values():
        faces = meta["faces"]
        assert faces["detector"] == "mtcnn" and len(faces["frames"]) == len(faces["boxes"]) == 4
        found = [boxes for boxes in faces["boxes"] if boxes]
        assert len(found) >= 3 and faces["frames_without_face"] == 4 - len(found)
        for x1, y1, x2, y2, score, *landmarks in (boxes[0] for boxes in found):
            assert 0 <= x1 < x2 <= meta["width"] and 0 <= y1 < y2 <= meta["height"] and score > 0.9
            assert len(landmarks) == 10


def test_shard_cli_summary_and_errors(tmp_path, ffpp_manifest):
    result = run_cli("shard", "--manifest", ffpp_manifest, "--out", tmp_path / "s", "--shard-size", "2M", "--quiet")
    assert result.returncode == 0, result.stderr
    assert "35 videos" in result.stdout and (tmp_path / "s/index.json").is_file()
    bad = run_cli("shard", "--manifest", tmp_path / "missing.jsonl", "--out", tmp_path / "s2")
    assert bad.returncode == 2 and "missing.jsonl" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    size = run_cli("shard", "--manifest", ffpp_manifest, "--out", tmp_path / "s3", "--shard-size", "lots")
    assert size.returncode == 2 and "--shard-size" in size.stderr
    shutil.rmtree(tmp_path / "s")


def test_old_records_without_keys_get_them_from_the_tar_without_a_rewrite(tmp_path, ffpp_manifest):
    first = write_shards(ffpp_manifest, tmp_path, target_bytes=3_000_000, progress=False)
    # as an earlier version left a finished folder: records without keys in .parts/, an index.json without plan
    # hashes (nothing to resume from)
    index = read_json(tmp_path / "index.json")
    (tmp_path / ".parts").mkdir()
    for shard in index["shards"]:
        record = {key: value for key, value in shard.items() if key != "keys"}
        (tmp_path / ".parts" / f"{shard['name']}.json").write_text(json.dumps({**record, "skipped": []}))
        del shard["plan_hash"]
    (tmp_path / "index.json").write_text(json.dumps(index))
    stamps = {path.name: path.stat().st_mtime_ns for path in tmp_path.glob("*.tar")}
    again = write_shards(ffpp_manifest, tmp_path, target_bytes=3_000_000, progress=False)
    assert again["totals"]["resumed_shards"] == first["totals"]["shards"]
    assert stamps == {path.name: path.stat().st_mtime_ns for path in tmp_path.glob("*.tar")}
    assert [shard["keys"] for shard in again["shards"]] == [shard["keys"] for shard in first["shards"]]
    assert again["shards"] == first["shards"] and not (tmp_path / ".parts").exists()


def test_a_rerun_with_other_settings_leaves_exactly_the_tars_index_json_lists(tmp_path, ffpp_manifest):
    out = tmp_path / "out"
    clean = write_shards(ffpp_manifest, tmp_path / "clean", target_bytes=4_000_000, progress=False)
    assert run_cli("shard", "--manifest", ffpp_manifest, "--out", out, "--shard-size", "1.5M",
                   "--quiet").returncode == 0
    many = sorted(path.name for path in out.glob("*.tar"))
    # what an earlier concurrent run left: its tars without their records (another run rewrote index.json)
    assert not (out / ".parts").exists()
    (out / "index.json").unlink()
    result = run_cli("shard", "--manifest", ffpp_manifest, "--out", out, "--shard-size", "4M", "--quiet")
    assert result.returncode == 0, result.stderr
    index = read_json(out / "index.json")
    listed = sorted(shard["name"] for shard in index["shards"])
    gone = sorted(set(many) - set(listed))
    assert gone and f"removed {len(gone)} shard(s) of an earlier run that this plan does not list: " \
        f"{', '.join(gone)}" in result.stdout
    assert sorted(path.name for path in out.glob("*.tar")) == listed
    assert sorted(path.name for path in out.glob("*.idx")) == sorted(shard["dali_index"] for shard in index["shards"])
    assert not (out / ".parts").exists()
    assert [shard["sha256"] for shard in index["shards"]] == [shard["sha256"] for shard in clean["shards"]]
    assert set(read_back(sorted(out.glob("*.tar")))) == {row["key"] for row in read_jsonl(ffpp_manifest)}

    # a tar another run wrote under a kept shard's name (its record says another size) is written again
    shutil.copyfile(out / listed[-1], out / listed[0])
    again = write_shards(ffpp_manifest, out, target_bytes=4_000_000, progress=False)
    assert again["totals"]["resumed_shards"] == len(listed) - 1 and "notes" not in again
    assert [shard["sha256"] for shard in again["shards"]] == [shard["sha256"] for shard in clean["shards"]]

    # a smaller target: more shards, again only the listed ones on disk
    smaller = write_shards(ffpp_manifest, out, target_bytes=1_000_000, progress=False)
    assert sorted(path.name for path in out.glob("*.tar")) == sorted(shard["name"] for shard in smaller["shards"])
    assert len(smaller["shards"]) > len(listed)


def test_a_concurrent_run_is_refused_and_a_killed_runs_leftovers_are_removed(tmp_path, fixtures):
    _, rows = six_video_manifest(tmp_path, fixtures)
    data = tmp_path / "data"
    out = tmp_path / "shards"
    # the first shard's second video becomes a FIFO: the run blocks reading it, mid-shard, holding the lock
    plan = plan_shards(rows, target_bytes=600_000)
    members = plan.rows(plan[0])
    blocking = members[1]["path"]
    (data / blocking).unlink()
    os.mkfifo(data / blocking)
    first = subprocess.Popen([sys.executable, "-m", "dfdtrain", "shard", "--manifest", tmp_path / "m.jsonl",
                              "--out", out, "--shard-size", "600K", "--quiet"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not list(out.glob(".*.tar.*.tmp")):
            assert first.poll() is None, first.stderr.read()
            assert time.time() < deadline, "the first run wrote no shard in 120 s"
            time.sleep(0.05)
        # a timeout: a second run that is not refused would block on the FIFO too
        second = subprocess.run([sys.executable, "-m", "dfdtrain", "shard", "--manifest", tmp_path / "m.jsonl",
                                 "--out", out, "--shard-size", "1M"], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2 and len(second.stderr.strip().splitlines()) == 1, second.stderr
        assert f"in use by 'shard' (pid {first.pid} " in second.stderr
        with pytest.raises(DirectoryLocked, match=f"pid {first.pid} "):
            write_shards(tmp_path / "m.jsonl", out, target_bytes=1_000_000, progress=False)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    (data / blocking).unlink()
    place_video(data / blocking, fixtures / "ffpp" / SIX_VIDEOS[blocking])
    assert len(list(out.glob(".*.tar.*.tmp"))) == 1 and (out / ".dfdtrain.lock").exists()  # what the kill left

    # besides the killed run's half shard, temp files as a kill elsewhere leaves them; another program's stays
    (out / ".parts/.train-000001.tar.json.k2x_9abc.tmp").write_text("{")
    (out / ".index.json.b7q2m1zz.tmp").write_text("{}")
    (out / ".train-000007.idx.a1b2c3d4.tmp").write_bytes(b"x" * 10)
    (out / ".notes.txt.a1b2c3d4.tmp").write_text("not ours")
    ours = [path for path in list(out.glob(".*.tmp")) + list(out.glob(".parts/.*.tmp")) if "notes" not in path.name]
    assert len(ours) == 4
    freed = sum(path.stat().st_size for path in ours)
    result = run_cli("shard", "--manifest", tmp_path / "m.jsonl", "--out", out, "--shard-size", "600K", "--quiet")
    assert result.returncode == 0, result.stderr
    assert f"took over a stale lock of 'shard' (pid {first.pid} " in result.stdout
    assert f"removed 4 temp file(s) left by an interrupted run, freeing {freed:,} bytes" in result.stdout
    assert [path.name for path in list(out.glob(".*.tmp")) + list(out.glob(".parts/.*.tmp"))] == \
        [".notes.txt.a1b2c3d4.tmp"]
    index = read_json(out / "index.json")
    assert sorted(path.name for path in out.glob("*.tar")) == sorted(shard["name"] for shard in index["shards"])
    samples = read_back(sorted(out.glob("*.tar")))
    assert set(samples) == {row["key"] for row in rows} and index["skipped"] == []
    for row in rows:
        assert samples[row["key"]][0] == (data / row["path"]).read_bytes()
    assert not (out / ".dfdtrain.lock").exists() and not (out / ".parts").exists()


def test_shard_help_names_the_tars_and_the_measured_speed_up():
    shard_help = run_cli("shard", "--help")
    top_help = run_cli("--help")  # argparse %-formats a subcommand's help here, not its description above
    assert shard_help.returncode == top_help.returncode == 0
    for text in (shard_help.stdout, top_help.stdout):
        assert "<split>-NNNNNN.tar" in " ".join(text.split()) and "%" not in text
    shard_text = " ".join(shard_help.stdout.split())
    assert "~40x faster" in shard_text and "20x" not in shard_text  # the README's measured ~40x
    assert "--min-track-share" in shard_text and "--min-track-score" in shard_text


def test_a_malformed_manifest_line_is_one_error_line(tmp_path, ffpp_manifest):
    lines = ffpp_manifest.read_text().splitlines()
    (tmp_path / "m.jsonl").write_text("\n".join([lines[0], lines[1][:40], *lines[2:]]) + "\n")
    result = run_cli("shard", "--manifest", tmp_path / "m.jsonl", "--out", tmp_path / "s")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert f"{tmp_path / 'm.jsonl'}:2: not a JSON line (" in result.stderr
    (tmp_path / "binary.jsonl").write_bytes(b"\xff\xfe\x00\x01 not text\n")
    binary = run_cli("shard", "--manifest", tmp_path / "binary.jsonl", "--out", tmp_path / "s")
    assert binary.returncode == 2 and binary.stderr.strip().splitlines() == [
        f"dfdtrain shard: error: {tmp_path / 'binary.jsonl'}: not a UTF-8 text file (invalid start byte)"]
