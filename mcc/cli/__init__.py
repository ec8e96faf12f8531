"""Command-line programs of mcc-wsss: console scripts, also runnable as ``python -m mcc.cli.<name>``.

* ``mcc-train-voc`` / ``mcc-train-coco`` (:mod:`mcc.cli.train`): training, single process or ``torchrun``;
* ``mcc-evaluate`` (:mod:`mcc.cli.evaluate`): scores of a checkpoint, predictions, test-server files;
* ``mcc-pseudo-labels`` (:mod:`mcc.cli.pseudo_labels`): pseudo labels of a split for a second stage;
* ``mcc-demo`` (:mod:`mcc.cli.demo`): the CPU demo on synthetic data.

The modules only parse arguments and print; the work is done by :mod:`mcc.training` functions that can be
called from Python as well. ``examples/*.py`` are thin wrappers over these modules.
"""
