"""Train MCC on PASCAL VOC 2012 + SBD (published run: DeiT-B/16, 448 crops, 20k steps, batch 4).

    python examples/train_voc.py --data-root VOCdevkit/VOC2012 --pretrained-file deit_base.pth
    torchrun --nproc_per_node=4 examples/train_voc.py --data-root VOCdevkit/VOC2012 --amp

See ``docs/training.md`` and ``python examples/train_voc.py --help``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # examples/common.py, however the script is run

from common import main  # noqa: E402

if __name__ == "__main__":
    main("voc")
