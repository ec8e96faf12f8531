"""Score a checkpoint of ``train_voc.py`` / ``train_coco.py``: CAM, pseudo-label and segmentation mIoU.

    python examples/evaluate.py --checkpoint work_dirs/mcc_voc/best.pt --data-root VOCdevkit/VOC2012 --crf
    python examples/evaluate.py ... --out-dir eval --save-pred --save-vis 20
    torchrun --nproc_per_node=4 examples/evaluate.py --checkpoint ... --data-root ...  # images split

A wrapper of the installed command ``mcc-evaluate`` (:mod:`mcc.cli.evaluate`); see
``docs/evaluation.md`` and ``python examples/evaluate.py --help``.
"""

from mcc.cli.evaluate import main

if __name__ == "__main__":
    main()
