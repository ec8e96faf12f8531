"""Pseudo labels of a split (published: VOC ``train_aug``) from a checkpoint, for a second training stage.

    python examples/make_pseudo_labels.py --checkpoint work_dirs/mcc_voc/best.pt \
        --data-root VOCdevkit/VOC2012 --out-dir pseudo_labels
    torchrun --nproc_per_node=4 examples/make_pseudo_labels.py --checkpoint ... --data-root ... --out-dir ...

A wrapper of the installed command ``mcc-pseudo-labels`` (:mod:`mcc.cli.pseudo_labels`); see
``docs/evaluation.md`` and ``python examples/make_pseudo_labels.py --help``.
"""

from mcc.cli.pseudo_labels import main

if __name__ == "__main__":
    main()
