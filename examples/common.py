"""Former home of the training command line, now :mod:`mcc.cli.train` (installed with the package).

Kept so that ``import common`` from older scripts still works; new code imports from ``mcc.cli.train``
and ``mcc.training`` (``net_from_checkpoint``).
"""

from mcc.cli.train import (  # noqa: F401 - re-exported
    DATASET_DEFAULTS,
    build_parser,
    main,
    mcc_config,
    parse_args,
    seed_everything,
    write_args,
)
from mcc.training import net_from_checkpoint  # noqa: F401 - re-exported
