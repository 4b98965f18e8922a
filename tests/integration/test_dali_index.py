"""Our DALI webdataset index writer against DALI itself: its wds2idx tool and a real CPU reader pipeline."""

import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile

import pytest
import webdataset

from dfdtrain.data.decode.dali_tar_index import INDEX_VERSION, dali_index_path, read_index_samples, write_dali_index

# Payload sizes around the 512-byte tar block (0, 1, 511, 512, 513) and odd larger ones.
PAYLOAD_SIZES = [0, 1, 511, 512, 513, 1023, 4097, 40961, 3, 777, 65537]


def make_samples():
    samples = []
    for number, size in enumerate(PAYLOAD_SIZES):
        # A long key (over tar's 100-character name field) needs a pax header before the member.
        key = f"video-{number:04d}" if number != 3 else "long-" + "k" * 120
        extension = "webm" if number % 4 == 1 else "mp4"
        payload = bytes((number * 7 + position) % 256 for position in range(size))
        meta = json.dumps({"key": key, "label": number % 2, "size": size}).encode()
        samples.append({"__key__": key, extension: payload, "json": meta})
    return samples


def write_tar(path, samples):
    with webdataset.TarWriter(str(path)) as writer:
        for sample in samples:
            writer.write(sample)
    return str(path)


def payload_of(sample):
    return sample.get("mp4", sample.get("webm"))


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dali_index")
    samples = make_samples()
    tar_path = write_tar(folder / "train-000000.tar", samples)
    index_path = dali_index_path(tar_path)
    write_dali_index(tar_path, index_path)
    return tar_path, index_path, samples


def run_wds2idx(tar_path, index_path):
    if importlib.util.find_spec("wds2idx") is None:
        pytest.skip("DALI's wds2idx tool is not installed (it ships with nvidia-dali)")
    # The tool prints progress on stdout; its index is what we compare.
    subprocess.run([sys.executable, "-m", "wds2idx", tar_path, index_path], check=True, capture_output=True)
    with open(index_path, "rb") as handle:
        return handle.read()


def read_bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


def test_index_path_is_the_sibling_idx():
    assert dali_index_path("shards/train-000003.tar") == "shards/train-000003.idx"
    assert dali_index_path("shards/train.000.tar") == "shards/train.000.idx"
    assert dali_index_path("shards/train-000003") == "shards/train-000003.idx"


def test_index_matches_dali_wds2idx_byte_for_byte(shard, tmp_path):
    tar_path, index_path, samples = shard
    ours = read_bytes(index_path)
    theirs = run_wds2idx(tar_path, str(tmp_path / "wds2idx.idx"))
    assert ours == theirs
    lines = ours.decode().splitlines()
    assert lines[0] == f"{INDEX_VERSION} {len(samples)}"
    assert len(lines) == 1 + len(samples)


def test_offsets_point_at_the_payload_bytes(shard):
    tar_path, _, samples = shard
    indexed = read_index_samples(tar_path)
    assert len(indexed) == len(samples)
    with open(tar_path, "rb") as handle:
        for components, sample in zip(indexed, samples):
            for extension, offset, size, name in components:
                assert name == f"{sample['__key__']}.{extension}"
                handle.seek(offset)
                assert handle.read(size) == sample[extension]


def test_folders_hidden_files_and_links_are_skipped_like_wds2idx(tmp_path):
    tar_path = str(tmp_path / "mixed.tar")
    with tarfile.open(tar_path, "w") as archive:
        def add_file(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, fileobj=io.BytesIO(data))

        folder = tarfile.TarInfo("clips")
        folder.type = tarfile.DIRTYPE
        archive.addfile(folder)
        add_file(".hidden.txt", b"hidden")
        add_file("clips/a.mp4", b"a" * 700)
        add_file("clips/a.json", b"{}")
        add_file("clips/.a.json", b"hidden in a folder")
        link = tarfile.TarInfo("clips/b.mp4")
        link.type = tarfile.SYMTYPE
        link.linkname = "a.mp4"
        archive.addfile(link)
        add_file("clips/b.seg.0.mp4", b"b")  # key 'clips/b', extension 'seg.0.mp4'
        add_file("clips/b.json", b"[]")
    index_path = str(tmp_path / "mixed.idx")
    assert write_dali_index(tar_path, index_path) == 2
    assert read_bytes(index_path) == run_wds2idx(tar_path, str(tmp_path / "wds2idx.idx"))


def test_names_without_extension_and_empty_archives(tmp_path):
    # wds2idx would index "README" as key "READM" with extension "README"; no ext= can ask for it.
    tar_path = str(tmp_path / "readme.tar")
    with tarfile.open(tar_path, "w") as archive:
        archive.addfile(tarfile.TarInfo("README"), fileobj=None)
    with pytest.raises(ValueError, match="no samples"):
        write_dali_index(tar_path)
    assert not os.path.exists(dali_index_path(tar_path))


def test_whitespace_in_a_member_name_is_refused(tmp_path):
    tar_path = write_tar(tmp_path / "space.tar", [{"__key__": "my clip", "mp4": b"x"}])
    with pytest.raises(ValueError, match="whitespace"):
        write_dali_index(tar_path)


def test_rewrite_replaces_the_index_atomically(shard, tmp_path):
    tar_path, index_path, _ = shard
    copy_path = str(tmp_path / "copy.idx")
    with open(copy_path, "w") as handle:
        handle.write("stale\n")
    write_dali_index(tar_path, copy_path)
    assert read_bytes(copy_path) == read_bytes(index_path)
    assert sorted(os.listdir(tmp_path)) == ["copy.idx"]  # no temp file left behind


def read_with_dali(tar_paths, index_paths, shard_id, num_shards, batch_size):
    """One batch from DALI's webdataset reader on CPU: [(payload bytes, json bytes), ...]."""
    from nvidia.dali import fn, pipeline_def

    # device_id=None makes a CPU-only pipeline: no CUDA driver or GPU needed for the reader.
    @pipeline_def(batch_size=batch_size, num_threads=1, device_id=None)
    def reader_pipeline():
        payload, meta = fn.readers.webdataset(
            paths=tar_paths, index_paths=index_paths, ext=["mp4;webm", "json"],
            missing_component_behavior="error", shard_id=shard_id, num_shards=num_shards,
            stick_to_shard=True, name="reader")
        return payload, meta

    pipeline = reader_pipeline()
    pipeline.build()
    payloads, metas = pipeline.run()
    return [(bytes(payloads.at(i)), bytes(metas.at(i))) for i in range(len(payloads))]


def dali_or_skip():
    try:
        import nvidia.dali  # noqa: F401
    except Exception as error:  # a broken install fails with more than ImportError
        pytest.skip(f"nvidia.dali does not import ({type(error).__name__}: {error})")


def test_dali_reader_returns_every_sample_unchanged(shard):
    dali_or_skip()
    tar_path, index_path, samples = shard
    read = read_with_dali([tar_path], [index_path], shard_id=0, num_shards=1, batch_size=len(samples))
    assert read == [(payload_of(sample), sample["json"]) for sample in samples]


def test_dali_shards_together_return_every_sample_once(shard, tmp_path):
    dali_or_skip()
    tar_path, index_path, samples = shard
    # A second tar, so the reader's shards cut across files.
    second_samples = [dict(sample, __key__="second-" + sample["__key__"]) for sample in samples[:4]]
    for sample in second_samples:
        sample["json"] = json.dumps({"key": sample["__key__"]}).encode()
    second_tar = write_tar(tmp_path / "train-000001.tar", second_samples)
    second_index = dali_index_path(second_tar)
    write_dali_index(second_tar, second_index)

    written = samples + second_samples
    total = len(written)
    seen = []
    for shard_id in range(2):
        # DALI gives shard i the samples [i * total // 2, (i + 1) * total // 2).
        shard_size = (shard_id + 1) * total // 2 - shard_id * total // 2
        seen += read_with_dali([tar_path, second_tar], [index_path, second_index], shard_id=shard_id,
                               num_shards=2, batch_size=shard_size)
    expected = [(payload_of(sample), sample["json"]) for sample in written]
    assert sorted(seen) == sorted(expected)
    keys = [json.loads(meta)["key"] for _, meta in seen]
    assert len(set(keys)) == total
