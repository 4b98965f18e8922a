"""pytest fixtures shared by every test folder; plain helpers are in support.py."""

import pytest

from support import FIXTURES, SMALL_DEMO, make_synth_shards, run_cli, train_tiny


@pytest.fixture(scope="session")
def fixtures():
    if not FIXTURES.is_dir():
        pytest.fail(f"real fixtures not found at {FIXTURES} (set DFDTRAIN_FIXTURES)")
    return FIXTURES


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """A small detector trained for real (1 epoch, 1 process, DDP engine) on synth shards: its run directory."""
    root = tmp_path_factory.mktemp("trained")
    shards = make_synth_shards(root, count=12, frames=8, val_fraction=0.34, target_bytes=60_000, seed=11)
    run_dir = root / "run"
    result = train_tiny(run_dir, shards, "clip.crop=face")
    if result.returncode != 0:
        pytest.fail(f"training the test detector failed: {result.stderr[-2000:]}")
    return run_dir


@pytest.fixture(scope="session")
def small_shards(tmp_path_factory):
    """16 generated clips (8 frames) in train/val shards, for the training-engine and run-safety tests."""
    return make_synth_shards(tmp_path_factory.mktemp("train"), count=16, frames=8, val_fraction=0.25,
                             target_bytes=60_000, seed=3)


@pytest.fixture(scope="session")
def ffpp_shards(tmp_path_factory, fixtures):
    """Real FF++ shards with a ``method`` field: the YouTube pair 183/253, its 2 reals and its fakes by each of
    the 4 manipulation methods (a whole leakage group, and few videos: decoding full-size clips is slow)."""
    from dfdtrain.data.ingest.datasets import IndexOptions
    from dfdtrain.data.ingest.manifest import build_manifest
    from dfdtrain.data.shards.writer import write_shards

    root = tmp_path_factory.mktemp("ffpp_eval")
    rows, _ = build_manifest("ffpp", fixtures / "ffpp", IndexOptions(ffpp_splits=str(fixtures / "labels/ffpp")),
                             progress=False)
    rows = [row for row in rows if row["group"] == "ffpp:183-253"]
    write_shards(rows, root / "shards", target_bytes=2_000_000, progress=False)
    return root / "shards"


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """A detector trained by `dfdtrain demo` for real (SMALL_DEMO): the demo's report.json (``checkpoint``: the best
    checkpoint, ``data``: the generated clips)."""
    import json

    out = tmp_path_factory.mktemp("demo") / "demo"
    result = run_cli("demo", "--out", out, "--quiet", "--json", *SMALL_DEMO)
    if result.returncode != 0:
        pytest.fail(f"the demo training failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def ffpp_manifest(tmp_path_factory, fixtures):
    """The real FF++ fixtures indexed with their official splits: a manifest for the shard tests."""
    from dfdtrain.data.ingest.datasets import IndexOptions
    from dfdtrain.data.ingest.manifest import build_manifest, write_manifest

    path = tmp_path_factory.mktemp("manifest") / "ffpp.jsonl"
    rows, summary = build_manifest("ffpp", fixtures / "ffpp", IndexOptions(ffpp_splits=str(fixtures / "labels/ffpp")),
                                   progress=False)
    write_manifest(path, rows, summary)
    return path
