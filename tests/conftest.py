import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("DFDTRAIN_FIXTURES", REPO.parent / "shared" / "fixtures"))
# A small real H.264 clip (FF++ c40, 390 frames, ~190 KB) used to populate generated dataset trees.
SMALL_CLIP = FIXTURES / "ffpp/original_sequences/youtube/c40/videos/183.mp4"


@pytest.fixture(scope="session")
def fixtures():
    if not FIXTURES.is_dir():
        pytest.fail(f"real fixtures not found at {FIXTURES} (set DFDTRAIN_FIXTURES)")
    return FIXTURES


def place_video(path, source=SMALL_CLIP):
    """Put a real video at ``path`` (a copy: tests must never write into the shared fixtures)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, path)
    return path


def run_cli(*args, cwd=None):
    """Run ``python -m dfdtrain ARGS`` for real; returns the CompletedProcess (text output)."""
    return subprocess.run([sys.executable, "-m", "dfdtrain", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def make_synth_shards(root, count, frames, val_fraction, target_bytes, seed, width=64, height=64, codec="h264"):
    """Real shards of generated clips: synth -> folder index (no test split) -> shard. Returns the shard folder."""
    from dfdtrain.data.index import build_manifest, write_manifest
    from dfdtrain.data.shard import write_shards
    from dfdtrain.data.synth import synthesize

    root = Path(root)
    synthesize(root / "data", count=count, frames=frames, width=width, height=height, codec=codec, seed=seed,
               progress=False)
    rows, summary = build_manifest("folder", root / "data", val_fraction=val_fraction, test_fraction=0,
                                   progress=False)
    write_manifest(root / "m.jsonl", rows, summary)
    write_shards(root / "m.jsonl", root / "shards", target_bytes=target_bytes, progress=False)
    return root / "shards"
