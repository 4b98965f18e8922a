"""Distributed sharding: --part I/N runs, torchrun ranks and the merge write exactly the one-process shards; a
killed part resumes; mixed part counts, other options and missing parts are refused with one line."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from support import SIX_VIDEOS, place_video, read_back, run_cli, shards_by_name, six_video_manifest
from dfdtrain.data.shards.parts import Part, assign_parts
from dfdtrain.data.shards.plan import plan_shards
from dfdtrain.data.shards.writer import write_shards
from dfdtrain.core.errors import DfdError
from dfdtrain.core.fileio import read_json

SHARD_SIZE = "1.5M"


def shards_of(out):
    """What a finished folder holds: {shard name: (sha256, keys)} from index.json, checked against the tars on
    disk, and no part records, part locks or temp files left."""
    shards, index = shards_by_name(out)
    assert sorted(path.name for path in out.glob("*.tar")) == sorted(shards)
    assert not (out / ".parts").exists() and not list(out.glob(".dfdtrain*.lock")) and not list(out.glob(".*.tmp"))
    return shards, index


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, ffpp_manifest):  # noqa: F811
    out = tmp_path_factory.mktemp("one_process")
    write_shards(ffpp_manifest, out, target_bytes=1_500_000, progress=False)
    return shards_of(out)


def one_error_line(result, *fragments):
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def test_two_parts_and_a_merge_write_exactly_the_one_process_shards(tmp_path, ffpp_manifest, one_process):  # noqa: F811
    out = tmp_path / "shards"
    first = run_cli("shard", "--manifest", ffpp_manifest, "--out", out, "--shard-size", SHARD_SIZE, "--part", "0/2",
                    "--quiet")
    assert first.returncode == 0, first.stderr
    assert "part 0/2: " in first.stdout and f"dfdtrain shard --merge --out {out}" in first.stdout
    assert not (out / "index.json").exists()

    one_error_line(run_cli("shard", "--merge", "--out", out), "part(s) 1 of 2 are missing or unfinished")
    one_error_line(run_cli("shard", "--manifest", ffpp_manifest, "--out", out, "--shard-size", SHARD_SIZE,
                           "--part", "0/3"), "unmerged 2-part run", "missing: 1")
    with pytest.raises(DfdError, match="unmerged 2-part run"):
        write_shards(ffpp_manifest, out, target_bytes=1_500_000, progress=False)
    with pytest.raises(DfdError, match=r"part\(s\) 0 of 2 here were made from another manifest or other options"):
        write_shards(ffpp_manifest, out, target_bytes=3_000_000, progress=False, part=Part(1, 2))

    record = write_shards(ffpp_manifest, out, target_bytes=1_500_000, progress=False, part=Part(1, 2))
    assert record["part"] == 1 and record["shards"] and record["resumed_shards"] == 0
    merged = run_cli("shard", "--merge", "--out", out, "--quiet")
    assert merged.returncode == 0, merged.stderr
    shards, index = shards_of(out)
    assert shards == one_process[0]  # same shards, same bytes, same samples in the same order
    assert index["totals"]["samples"] == one_process[1]["totals"]["samples"]
    assert [part["part"] for part in index["parts"]] == [0, 1]
    assert sum(part["shards"] for part in index["parts"]) == len(shards)
    one_error_line(run_cli("shard", "--merge", "--out", out), "no finished part to merge")

    # the same parts again over the merged folder: every shard kept (from index.json), and the merge works again
    for number in (0, 1):
        again = write_shards(ffpp_manifest, out, target_bytes=1_500_000, progress=False, part=Part(number, 2))
        assert again["resumed_shards"] == len(again["shards"])
    merged = run_cli("shard", "--merge", "--out", out, "--quiet", "--json")  # the merged index.json, key lists too
    assert merged.returncode == 0 and json.loads(merged.stdout) == json.loads((out / "index.json").read_text())
    assert shards_of(out)[0] == one_process[0]


def test_torchrun_ranks_write_the_one_process_shards_and_rank_0_merges(tmp_path, ffpp_manifest, one_process):  # noqa: F811
    out = tmp_path / "shards"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "dfdtrain", "shard", "--manifest", str(ffpp_manifest), "--out", str(out),
                             "--shard-size", SHARD_SIZE, "--quiet"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    shards, index = shards_of(out)
    assert shards == one_process[0]
    assert [part["part"] for part in index["parts"]] == [0, 1]


def test_a_killed_part_resumes_and_the_merge_is_complete(tmp_path, fixtures):
    manifest, rows = six_video_manifest(tmp_path, fixtures)
    data = tmp_path / "data"
    write_shards(manifest, tmp_path / "one", target_bytes=600_000, progress=False)
    reference = shards_of(tmp_path / "one")[0]
    out = tmp_path / "shards"
    write_shards(manifest, out, target_bytes=600_000, progress=False, part=Part(1, 2))

    # part 0's last video becomes a FIFO: the part blocks on it, its earlier shards written, its last one begun
    planned = plan_shards(rows, target_bytes=600_000)
    plan = {shard.name: planned.rows(shard) for shard in planned}
    part0 = assign_parts(planned, 2, {"store": "original"})[0]
    assert len(part0) >= 2  # so the kill leaves a finished shard (and the temp tar of the last one)
    blocking = plan[part0[-1]][-1]["path"]
    (data / blocking).unlink()
    os.mkfifo(data / blocking)
    command = ["shard", "--manifest", manifest, "--out", out, "--shard-size", "600K", "--part", "0/2", "--quiet"]
    killed = subprocess.Popen([sys.executable, "-m", "dfdtrain", *map(str, command)], stderr=subprocess.PIPE,
                              text=True)
    try:
        deadline = time.time() + 120
        while not list(out.glob(f".{part0[-1]}.*.tmp")):
            assert killed.poll() is None, killed.stderr.read()
            assert time.time() < deadline, "part 0 did not reach its last shard in 120 s"
            time.sleep(0.05)
        one_error_line(run_cli("shard", "--merge", "--out", out), "cannot merge while part(s) 0 of 2 are running")
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    (data / blocking).unlink()
    place_video(data / blocking, fixtures / "ffpp" / SIX_VIDEOS[blocking])
    one_error_line(run_cli("shard", "--merge", "--out", out), "part(s) 0 of 2 are missing or unfinished")

    again = run_cli(*command)
    assert again.returncode == 0, again.stderr
    assert f"took over a stale lock of 'shard --part 0/2' (pid {killed.pid} " in again.stdout
    record = read_json(out / ".parts/part-00000-of-00002.json")
    assert record["resumed_shards"] == len(part0) - 1  # only the killed shard is written again
    assert run_cli("shard", "--merge", "--out", out, "--quiet").returncode == 0
    shards, index = shards_of(out)
    assert shards == reference and index["skipped"] == []
    samples = read_back(sorted(out.glob("*.tar")))
    assert set(samples) == {row["key"] for row in rows}
    for row in rows:
        assert samples[row["key"]][0] == (data / row["path"]).read_bytes()


def test_parts_share_the_predicted_work_not_the_bytes(fixtures):
    """The 18 fixture videos at 1M a shard: balanced by bytes one part got 12 videos and twice the work of the
    other (a 3.8 MB DFDC clip is about as much work as a 0.2 MB FF++ c40 one); balanced by predicted work (frames x
    pixels, frames, detections) the parts are within 25%."""
    from dfdtrain.data.shards.parts import shard_work
    from dfdtrain.data.decode.video import probe

    rows = []
    for pattern in ("dfdc/*/*.mp4", "ffpp/original_sequences/*/c40/videos/*.mp4",
                    "ffpp/manipulated_sequences/*/c40/videos/183_253.mp4"):
        for path in sorted(fixtures.glob(pattern)):
            rows.append({"key": f"v{len(rows):02d}", "path": str(path), "root": "", "split": "train",
                         **probe(str(path))})
    faces = {"store": "faces", "face_clips": {"tracks": {"detect_every": 16}}}
    plan = plan_shards(rows, target_bytes=1_000_000)
    members = {shard.name: plan.rows(shard) for shard in plan}
    work = {part: sum(shard_work(members[name], faces) for name in names)
            for part, names in assign_parts(plan, 2, faces).items()}
    assert len(rows) == 18 and len(plan) >= 8 and max(work.values()) <= 1.25 * min(work.values())
    by_bytes = {part: sum(shard_work(members[name], faces) for name in names)
                for part, names in assign_parts(plan, 2, {"store": "original"}).items()}
    assert max(by_bytes.values()) > 1.5 * min(by_bytes.values())
    # every shard goes to exactly one part, the same whichever part asks
    assert sorted(sum(assign_parts(plan, 3, faces).values(), [])) == sorted(members)


def test_face_store_bytes_do_not_depend_on_threads_workers_or_parts(tmp_path, fixtures):
    """MTCNN's boxes differ in the last digit with torch's thread count (on FF++ 183, 2 threads against 1): every
    shard process detects on one thread, so a one-process run in a 2-thread process writes the bytes worker
    processes and parts write."""
    import torch

    from dfdtrain.data.faces.clip_options import FaceClipOptions
    from dfdtrain.data.shards.parts import merge_parts

    rows = [{"key": name, "path": f"ffpp/original_sequences/youtube/c40/videos/{name}.mp4", "root": str(fixtures),
             "label": 0, "dataset": "test", "group": name, "split": "train",
             "bytes": (fixtures / f"ffpp/original_sequences/youtube/c40/videos/{name}.mp4").stat().st_size}
            for name in ("183", "253")]  # a shard each (target_bytes 1): the parts get one each
    options = {"target_bytes": 1, "progress": False, "store": "faces", "face_clip_options": FaceClipOptions(size=64)}
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        one = write_shards(rows, tmp_path / "one", **options)
        assert torch.get_num_threads() == 2  # the caller's setting is given back
    finally:
        torch.set_num_threads(threads)
    workers = write_shards(rows, tmp_path / "workers", workers=2, **options)
    for index in range(2):
        write_shards(rows, tmp_path / "parts", part=Part(index, 2), **options)
    parts = merge_parts(tmp_path / "parts")
    expected = [(shard["name"], shard["sha256"]) for shard in one["shards"]]
    assert len(expected) == 2
    assert [(shard["name"], shard["sha256"]) for shard in workers["shards"]] == expected
    assert [(shard["name"], shard["sha256"]) for shard in parts["shards"]] == expected
