"""MCC end to end on CPU in a few minutes: synthetic VOC, a small ViT from scratch, CAM vs pseudo labels.

    make demo        # = HF_HUB_OFFLINE=1 .venv/bin/python examples/demo.py

A wrapper of ``python -m mcc.cli.demo`` (:mod:`mcc.cli.demo`): it keeps its results in ``runs/demo/``
(``metrics.json``, ``samples.png``); see ``docs/training.md`` and ``python examples/demo.py --help``.
"""

from mcc.cli.demo import main

if __name__ == "__main__":
    main()
