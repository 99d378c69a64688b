"""The layering is a contract (pyproject.toml [tool.importlinter]): model/ and data/ import nothing of ours above
them nor each other, train/ imports only model/ and data/, experiments/ sits on top."""

import subprocess
import sys

from tests import helpers


def test_imports_only_point_down():
    r = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
                        "lint_imports_command()"], cwd=helpers.ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "0 broken" in r.stdout, r.stdout[-3000:] + r.stderr[-2000:]
