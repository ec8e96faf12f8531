"""Train MCC on COCO 2014 in VOC layout (published run: DeiT-B/16, 448 crops, 80k steps, batch 8).

    python -m mcc.data.coco_to_voc --coco-root coco --out coco_voc     # once, see docs/data.md
    torchrun --nproc_per_node=8 examples/train_coco.py --data-root coco_voc --amp

Validation during training uses the shipped ``val_part`` subset; see ``docs/training.md``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # examples/common.py, however the script is run

from common import main  # noqa: E402

if __name__ == "__main__":
    main("coco")
