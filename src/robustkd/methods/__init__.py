"""Methods as plug-ins: each method is one :class:`robustkd.methods.base.Method`, registered by name in
:mod:`robustkd.methods.registry` (the names themselves: :mod:`robustkd.method_names`).

Torch-free, like :mod:`robustkd.methods.darht`'s module level: an unused ``darht_teacher@<name>`` stage writes its
manifest without importing torch.
"""
