"""The README main job, for real: `dfdtrain demo` on a fresh folder reaches validation video AUC >= 0.90."""

import json
import os
import subprocess
import sys
from pathlib import Path

from support import REPO


def test_demo_trains_two_deepspeed_processes_on_cpu_to_the_auc_bar(tmp_path):
    environment = {**os.environ, "TORCH_EXTENSIONS_DIR": str(REPO / ".cache" / "torch_extensions")}
    result = subprocess.run([sys.executable, "-m", "dfdtrain", "demo", "--out", str(tmp_path / "demo"), "--quiet",
                             "--json"], capture_output=True, text=True, timeout=900, env=environment)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout)
    assert report == json.loads((tmp_path / "demo" / "report.json").read_text())
    assert report["engine"] == "deepspeed" and report["world_size"] == 2
    assert report["val"]["video"]["auc"] >= 0.90, report["val"]["video"]
    assert Path(report["checkpoint"]).is_dir() and report["checkpoint"].endswith("best")
    assert report["videos"] == 256 and report["skipped"] == 0
    assert report["seconds"] < 600
