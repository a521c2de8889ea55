"""robustkd: robustness through knowledge distillation, as a DVC pipeline.

Modules: params (schema), method_names (the methods, torch-free), methods (one plug-in per method), paths,
manifest (what each training stage produced), stage (the stage runner), roles (training one role), data (dataset
registry, in-memory prepare), splits (one interface to a prepared split, in memory or streamed), imagefolder
(image-file trees: ImageNet, Tiny ImageNet streamed), models (architecture registry), losses, training (one loop for every role), attacks, evaluation,
diagnostics, plotting.
The stage entry points live one level up, in ``src/<stage>.py``.
"""
