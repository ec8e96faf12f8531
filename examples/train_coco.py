"""Train MCC on COCO 2014 in VOC layout (published run: DeiT-B/16, 448 crops, 80k steps, batch 8).

    python -m mcc.data.coco_to_voc --coco-root coco --out coco_voc     # once, see docs/data.md
    torchrun --nproc_per_node=8 examples/train_coco.py --data-root coco_voc --amp

Validation during training uses the shipped ``val_part`` subset. A wrapper of the installed command
``mcc-train-coco`` (:mod:`mcc.cli.train`); see ``docs/training.md``.
"""

from mcc.cli.train import main_coco

if __name__ == "__main__":
    main_coco()
