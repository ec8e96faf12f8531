"""mcc.cam knows nothing above it: its modules import neither the network nor the training code.

Importing ``mcc.cam`` normally runs ``mcc/__init__.py`` first, which imports everything; the check
therefore puts a bare ``mcc`` package (its folder, without running ``__init__``) in ``sys.modules``,
imports the components and uses the CAM extractor on a plain classifier.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[2] / "mcc"

BARE = (
    "import sys, types\n"
    "bare = types.ModuleType('mcc')\n"
    f"bare.__path__ = [{str(PACKAGE_DIR)!r}]\n"
    "sys.modules['mcc'] = bare\n"
)
ABOVE = "sorted(m for m in sys.modules if m.startswith(('mcc.network', 'mcc.training', 'mcc.cli')))"


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BARE + code], capture_output=True, text=True)


def test_components_do_not_import_the_network():
    result = _run(
        "import torch\n"
        "from torch import nn\n"
        "import mcc.cam, mcc.refine, mcc.losses\n"
        "model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                      nn.Linear(4, 2))\n"
        "cams = mcc.cam.CAMExtractor(model, feature_layer='0', classifier='3')(torch.rand(1, 3, 8, 8))\n"
        "assert cams.shape == (1, 2, 8, 8)\n"
        f"print({ABOVE})\n"
        f"sys.exit(1 if {ABOVE} else 0)\n"
    )
    assert result.returncode == 0, f"imported {result.stdout.strip()} {result.stderr[-800:]}"


def test_the_check_sees_an_import_of_the_network():
    result = _run(f"import mcc.network\nsys.exit(0 if {ABOVE} else 1)\n")
    assert result.returncode == 0, result.stderr[-800:]
