"""Running a stage's ``main(params)``: params.yaml loaded and validated first, and a ProjectError ends the stage
with its message instead of a traceback. The one stage runner.

Torch-free, so that the stages that only aggregate JSON (metrics) or write a manifest (an unused darht_teacher) start
in a fraction of a second. The stages that run models pass ``torchrun=True``: they also run under
``torchrun --nproc_per_node N src/<stage>.py``, where every process runs ``main``, the batch sizes are checked
against the world size first, and the process group is closed at the end.
"""
from __future__ import annotations

import sys
from typing import Callable

from . import params as params_mod
from .errors import ProjectError


def run(main: Callable[[dict], None], torchrun: bool = False) -> None:
    if torchrun:
        from . import distributed  # imports torch: only the model stages pay for it

        check, finish = distributed.check_params, distributed.shutdown
    else:
        check, finish = None, None
    try:
        params = params_mod.load("params.yaml")
        if check is not None:
            check(params)
        main(params)
    except ProjectError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    finally:
        if finish is not None:
            finish()
