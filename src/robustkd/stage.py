"""Running a stage's ``main(params)``: params.yaml loaded and validated first, and a ProjectError ends the stage
with its message instead of a traceback.

Torch-free, so that the stages that only aggregate JSON (metrics) or write a marker (an unused darht_teacher) start
in a fraction of a second; the stages that run models use :func:`robustkd.pipeline.run_stage`, which adds the
torchrun checks.
"""
from __future__ import annotations

import sys
from typing import Callable

from . import params as params_mod
from .errors import ProjectError


def run(main: Callable[[dict], None], check: Callable[[dict], None] | None = None,
        finish: Callable[[], None] | None = None) -> None:
    """``check(params)`` runs before ``main``; ``finish()`` runs last, also after an error."""
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
