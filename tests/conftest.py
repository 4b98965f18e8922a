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
