"""robustkd: robustness through knowledge distillation, as a DVC pipeline.

Modules: params (schema), data (dataset registry), models (architecture registry),
losses, training (one loop for every role), attacks, evaluation, diagnostics, plotting.
The stage entry points live one level up, in ``src/<stage>.py``.
"""
