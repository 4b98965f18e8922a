"""Attack-report items on the shard stage and its readers: a merged folder refuses a part run of another run, a
full file system and a file as --out are one line, a wrongly typed index.json is one line, implausibly small
stored frame counts are re-counted, and embed never copies a hostile member name into its tar."""

import errno
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile

import pytest

from support import SMALL_CLIP, run_cli, six_video_manifest
from dfdtrain.data.shards.parts import Part, merge_parts
from dfdtrain.data.shards.tars import TarShardWriter
from dfdtrain.data.shards.writer import write_shards
from dfdtrain.core.errors import DfdError


def one_error_line(result, *fragments):
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in result.stderr, result.stderr


def folder_matches_index(out):
    """Every tar index.json lists is on disk with the sha256 the index records, and no other tar is."""
    index = json.loads((out / "index.json").read_text())
    listed = {shard["name"]: shard["sha256"] for shard in index["shards"]}
    on_disk = {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in out.glob("*.tar")}
    return on_disk == listed


# ------------------------------------------------------------------------------------------------ item 9
def test_a_merged_folder_refuses_a_part_run_of_another_run(tmp_path, fixtures):
    manifest, _ = six_video_manifest(tmp_path, fixtures)
    out = tmp_path / "shards"
    for number in (0, 1):
        write_shards(manifest, out, target_bytes=600_000, progress=False, part=Part(number, 2))
    merge_parts(out)
    assert folder_matches_index(out)

    # the attack: part 1 again with another shard size over the merged folder
    again = run_cli("shard", "--manifest", manifest, "--out", out, "--part", "1/2", "--shard-size", "1M", "--quiet")
    one_error_line(again, "holds a finished shard run", "other options (target_bytes)", "part 1/2",
                   str(out / "index.json"))
    assert folder_matches_index(out) and not (out / ".parts").exists()

    # a part of the very run the index describes keeps every shard: allowed, and the folder still matches
    same = run_cli("shard", "--manifest", manifest, "--out", out, "--part", "1/2", "--shard-size", "600K", "--quiet")
    assert same.returncode == 0, same.stderr
    assert folder_matches_index(out)


# ----------------------------------------------------------------------------------------------- item 18
def test_shard_out_naming_a_file_is_one_line(tmp_path, fixtures):
    manifest, _ = six_video_manifest(tmp_path, fixtures)
    afile = tmp_path / "taken.txt"
    afile.write_text("not a folder\n")
    one_error_line(run_cli("shard", "--manifest", manifest, "--out", afile, "--quiet"),
                   f"--out {afile} is an existing file, not a folder")
    one_error_line(run_cli("shard", "--manifest", manifest, "--out", afile / "sub", "--quiet"),
                   f"is inside {afile}, which is an existing file")
    assert afile.read_text() == "not a folder\n"


# ----------------------------------------------------------------------------------------------- item 11
def on_a_full_filesystem(tmp_path, size, script):
    """Run ``script`` (sh) with a real tmpfs of ``size`` mounted at tmp_path/full, in a private mount namespace
    (``unshare -rm``: no root needed, nothing mounted outside). Returns the CompletedProcess."""
    if not shutil.which("unshare") or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("unshare -rm (a private mount namespace) is not available here")
    mount = tmp_path / "full"
    mount.mkdir()
    return subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size={size} none {mount} && {script}"],
                          capture_output=True, text=True, timeout=300)


def test_shard_into_a_full_filesystem_is_one_line(tmp_path, fixtures):
    manifest, _ = six_video_manifest(tmp_path, fixtures)
    out = tmp_path / "full" / "shards"
    dfdtrain = f"{sys.executable} -m dfdtrain"
    result = on_a_full_filesystem(tmp_path, "700k", f"{dfdtrain} shard --manifest {manifest} --out {out} "
                                                    f"--shard-size 600K --quiet; echo rc=$?; ls -A {out}")
    assert "rc=2" in result.stdout, result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, line
    assert line.startswith(f"dfdtrain shard: error: {out}/train-0000") and ".tar: no space left on device (" in line
    assert " MB free; the " in line and " shard(s) left need about " in line
    assert not [name for name in result.stdout.split() if name.endswith(".tmp")]  # the cut shard left no temp file


def test_cli_turns_any_full_filesystem_write_into_one_line(tmp_path, fixtures):
    """The generic catch in cli.main: ``index`` writing its manifest onto a file system with no byte left."""
    data = tmp_path / "data" / "real"
    data.mkdir(parents=True)
    shutil.copyfile(SMALL_CLIP, data / "183.mp4")
    full = tmp_path / "full"
    result = on_a_full_filesystem(
        tmp_path, "64k", f"dd if=/dev/zero of={full}/filler bs=4k count=100 2>/dev/null; "
                         f"{sys.executable} -m dfdtrain index --dataset folder --root {tmp_path / 'data'} "
                         f"--out {full}/m.jsonl --quiet; echo rc=$?")
    assert "rc=2" in result.stdout, result.stderr
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line, line
    # the manifest's write names no file (a flush on an open temp file): the target is found and named
    assert line.startswith(f"dfdtrain index: error: {full}/m.jsonl: no space left on device (0.0 MB free)"), line


def test_a_full_shard_write_names_the_shard_and_leaves_no_temp_file(tmp_path):
    """TarShardWriter puts its path on a write's OSError (a write names no file) and removes its temp file."""
    class FullDisk:
        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "train-000000.tar"
    writer = TarShardWriter(target)
    writer.__enter__()
    writer._hashing.handle = FullDisk()  # the bytes go nowhere, as on a full disk
    with pytest.raises(OSError) as caught:
        try:
            writer.add("a", "mp4", b"x" * 100_000)
        except OSError as error:
            writer.__exit__(type(error), error, error.__traceback__)
            raise
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(target)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------- item 17
@pytest.mark.parametrize("field, value, fragment", [
    ("samples", "many", "field samples is 'many', not a count of samples"),
    ("labels", {"0": "lots"}, "field labels has '0': 'lots'"),
    ("labels", {"7": 1}, "field labels has '7': 1"),
    ("keys", "k1 k2", "field keys is 'k1 k2', not a list"),
    ("sha256", 12, "field sha256 is 12, not a string"),
])
def test_a_wrongly_typed_index_field_is_one_line_wherever_it_is_read(tmp_path, field, value, fragment):
    from dfdtrain.data.shards.catalog import count_samples, label_counts, reconcile, test_split_overlap, verify_shards

    out = tmp_path / "shards"
    out.mkdir()
    (out / "train-000000.tar").write_bytes(b"")
    entry = {"name": "train-000000.tar", "split": "train", "samples": 2, "labels": {"0": 1, "1": 1},
             "sha256": "0" * 64, "keys": ["a", "b"], field: value}
    (out / "index.json").write_text(json.dumps({"format": "dfdtrain-shards/1", "shards": [entry]}))
    shards = [str(out / "train-000000.tar")]
    readers = (count_samples, label_counts, verify_shards, test_split_overlap, lambda paths: reconcile(paths, [], []))
    for read in readers:
        with pytest.raises(DfdError) as caught:
            read(shards)
        message = str(caught.value)
        assert message.startswith(f"{out / 'index.json'}: shards[0] (train-000000.tar): {fragment}"), message
        assert "\n" not in message


def test_a_wrongly_typed_index_json_through_the_cli_is_one_line(tmp_path):
    out = tmp_path / "shards"
    out.mkdir()
    (out / "train-000000.tar").write_bytes(b"")
    (out / "index.json").write_text(json.dumps({"shards": [{"name": "train-000000.tar", "samples": "many",
                                                            "labels": {"0": 1}, "sha256": "0" * 64}]}))
    result = run_cli("embed", "--shards", out / "train-000000.tar", "--out", tmp_path / "emb", "--quiet",
                     "model.backbone=mobilenetv2_050", "clip.sampler.num_frames=2", "clip.image_size=32",
                     "data.decoder=pyav", "data.num_workers=0", "data.verify_shards=true")
    one_error_line(result, f"{out / 'index.json'}: shards[0] (train-000000.tar): field samples is 'many'")


def test_a_resumed_shard_run_rewrites_a_wrongly_typed_index_entry(tmp_path, fixtures):
    """The writer resumes from index.json: an entry with a wrongly typed field is not trusted, its shard is written
    again (no traceback from summing 'many')."""
    manifest, _ = six_video_manifest(tmp_path, fixtures)
    out = tmp_path / "shards"
    first = write_shards(manifest, out, target_bytes=600_000, progress=False)
    index = json.loads((out / "index.json").read_text())
    index["shards"][0]["samples"] = "many"
    (out / "index.json").write_text(json.dumps(index))
    again = write_shards(manifest, out, target_bytes=600_000, progress=False)
    assert again["totals"]["resumed_shards"] == len(first["shards"]) - 1
    assert again["totals"]["samples"] == first["totals"]["samples"] and folder_matches_index(out)


# ---------------------------------------------------------------------------------- item 10 and embed names
def tar_member(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """One real ``dfdtrain embed`` over a hand-made shard of the real 390-frame FF++ clip 183: samples whose json
    says frames 1, 0 and 390 (true), and samples with hostile member names. Returns (result, output folder)."""
    root = tmp_path_factory.mktemp("embed_attacks")
    clip = SMALL_CLIP.read_bytes()
    samples = {"one_frame": 1, "no_frames": 0, "true_count": 390,
               "../../escaped": 390, "/abs/olute": 390, "ctl\x01char": 390}
    with tarfile.open(root / "val-000000.tar", "w", format=tarfile.PAX_FORMAT) as tar:
        for key, frames in samples.items():
            meta = {"key": key, "label": 0, "frames": frames, "split": "val"}
            tar_member(tar, f"{key}.mp4", clip)
            tar_member(tar, f"{key}.json", json.dumps(meta).encode())
    out = root / "emb"
    result = run_cli("embed", "--shards", root / "val-000000.tar", "--out", out, "--quiet", "--dtype", "float32",
                     "model.backbone=mobilenetv2_050", "clip.sampler.num_frames=4", "clip.image_size=32",
                     "clip.crop=center", "data.decoder=pyav", "data.num_workers=0", "data.batch_size=6")
    return result, out


def embedded_meta(out):
    metas = {}
    for path in sorted(out.glob("*.tar")):
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.endswith(".json"):
                    metas[member.name] = json.loads(tar.extractfile(member).read())
    return metas


def test_implausibly_small_stored_frame_counts_are_recounted(embedded):
    result, out = embedded
    assert result.returncode == 0, result.stderr
    index = json.loads((out / "index.json").read_text())
    assert index["skipped"] == [] and index["totals"]["samples"] == 6
    by_key = {meta["key"]: meta for meta in embedded_meta(out).values()}
    truth = by_key["true_count"]
    assert truth["frames"] == 390 and "frames_stored" not in truth and truth["frame_indices"] == [48, 146, 243, 341]
    for key, stored in (("one_frame", 1), ("no_frames", 0)):
        meta = by_key[key]  # counted from the bytes, sampled like the true count, and the correction recorded
        assert (meta["frames"], meta["frames_stored"], meta["frame_indices"]) == (390, stored, truth["frame_indices"])
        assert meta["mask"] == [True] * 4


def test_embed_writes_no_hostile_member_name(embedded):
    result, out = embedded
    assert result.returncode == 0, result.stderr
    names = list(embedded_meta(out))
    for path in sorted(out.glob("*.tar")):
        with tarfile.open(path) as tar:
            names = tar.getnames()
        for name in names:
            assert ".." not in name and not name.startswith("/") and name.isprintable() and "/" not in name, name
    index = json.loads((out / "index.json").read_text())
    renamed = {item["key"]: item["as"] for item in index["renamed_keys"]}
    assert set(renamed) == {"../../escaped", "/abs/olute", "ctl\x01char"}
    assert renamed["../../escaped"].startswith("escaped-") and renamed["/abs/olute"].startswith("abs-olute-")
    assert {f"{name}.npy" for name in renamed.values()} <= set(names)
    assert "3 sample key(s) were not safe tar member names" in result.stdout
