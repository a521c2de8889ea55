"""Every method's plug-in, by name (the names: robustkd.method_names)."""
from __future__ import annotations

from .base import Method
from .darht import Darht
from .one_loss import ONE_LOSS_METHODS
from .purification import Purification

METHODS: dict[str, Method] = {**ONE_LOSS_METHODS, "purification": Purification(), "darht": Darht()}


def method_for(params: dict) -> Method:
    return METHODS[params["method"]]
