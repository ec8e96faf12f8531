"""Train MCC on PASCAL VOC 2012 + SBD (published run: DeiT-B/16, 448 crops, 20k steps, batch 4).

    python examples/train_voc.py --data-root VOCdevkit/VOC2012 --pretrained-file deit_base.pth
    torchrun --nproc_per_node=4 examples/train_voc.py --data-root VOCdevkit/VOC2012 --amp

A wrapper of the installed command ``mcc-train-voc`` (:mod:`mcc.cli.train`); see ``docs/training.md``
and ``python examples/train_voc.py --help``.
"""

from mcc.cli.train import main_voc

if __name__ == "__main__":
    main_voc()
