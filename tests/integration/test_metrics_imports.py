"""The metrics need no scikit-learn: importing dfdtrain's metrics leaves sklearn unimported."""

import subprocess
import sys

from support import REPO


def test_library_does_not_import_sklearn():
    code = "import sys, dfdtrain.metrics; assert not any(name.startswith('sklearn') for name in sys.modules)"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
