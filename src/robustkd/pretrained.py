"""A teacher's starting weights from a file (`teacher.init_from`), loaded with ``weights_only=True`` and checked
against the architecture the teacher is built with (the registry, robustkd.models).

Accepted forms:

- this project's sealed checkpoints (robustkd.models.save_checkpoint): the seal and the content digest are checked;
- a plain state_dict saved with ``torch.save(model.state_dict(), path)``;
- a dict holding the state_dict under ``state_dict``, ``model_state_dict``, ``model`` or ``net`` (the usual
  training-script and RobustBench-style layouts);
- in each, keys prefixed ``module.`` (saved from DataParallel / DistributedDataParallel) are taken without it.

The normaliser's buffers (``normalize.mean``, ``normalize.std``) may be absent: the model then keeps those of the
prepared data. Every other key must be there with the model's shape, and no other key may be: the error lists the
missing, the unexpected and the mismatched keys. Every error names `teacher.init_from`, the file and the fix, and
comes before any training and before anything is written.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch

from .errors import CheckpointError, ProjectError
from .io import unseal
from .models import _read_checkpoint, build_model

PARAM = "teacher.init_from"
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net")
OPTIONAL_KEYS = ("normalize.mean", "normalize.std")
SHOWN = 8  # keys listed per kind of mismatch
ZIP_MAGIC, PICKLE_PROTOCOL = b"PK\x03\x04", b"\x80"  # torch.save's format, and its legacy (pickle) format


def spec_for(group: dict, dataset: str) -> dict:
    """The teacher's model, as the registry builds it, for checking a file before the data are prepared (the
    normaliser gets neutral statistics: only its shapes, set by the channels, are checked)."""
    from .data import DATASETS  # the dataset's shape, without the prepared data

    d = DATASETS[dataset]
    return {"arch": group["arch"], "channels": d.channels, "size": d.size, "num_classes": d.num_classes,
            "mean": [0.0] * d.channels, "std": [1.0] * d.channels, "width": group["width"]}


def _error(path: str, what: str, fix: str) -> ProjectError:
    return CheckpointError(f"`{PARAM}` = {path!r}: {what}. {fix}")


def _state_dict(obj, path: str) -> dict[str, torch.Tensor]:
    """The tensors of a loaded file, from the accepted layouts."""
    def is_state(d) -> bool:
        return isinstance(d, dict) and bool(d) and all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                      for k, v in d.items())

    if is_state(obj):
        state = obj
    else:
        nested = [obj[k] for k in NESTED_KEYS if isinstance(obj, dict) and is_state(obj.get(k))]
        if not nested:
            kind = f"a dict with keys {sorted(map(str, obj))[:SHOWN]}" if isinstance(obj, dict) else type(obj).__name__
            raise _error(path, f"holds {kind}, not a state_dict (a dict of tensors, alone or under one of "
                               f"{', '.join(NESTED_KEYS)})",
                         "Save the model's weights with `torch.save(model.state_dict(), path)`")
        state = nested[0]
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return dict(state)


def read_file(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict in ``path`` (weights_only load; a pickle payload never runs)."""
    name = str(path)
    file = Path(path)
    if not file.is_file():
        raise _error(name, "file not found", "Put the checkpoint there, or set it to null")
    data = file.read_bytes()
    if unseal(data) is not None:  # this project's own checkpoint: seal and digest checked
        try:
            return _state_dict(_read_checkpoint(file)["state_dict"], name)
        except CheckpointError as err:
            raise _error(name, f"a damaged robustkd checkpoint ({err})", "Replace the file") from None
    import io

    if not data.startswith((ZIP_MAGIC, PICKLE_PROTOCOL)):
        raise _error(name, "not a PyTorch checkpoint (neither a zip archive, torch.save's format, nor a legacy "
                           "pickle)", "Give a file written by torch.save (a state_dict) or a robustkd checkpoint")
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's own explanation is generic; keep the line that says what was refused
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = next((line for line in lines if "GLOBAL" in line or "WeightsUnpickler" in line),
                      lines[0] if lines else type(err).__name__)
        raise _error(name, f"holds objects other than tensors and plain containers, which weights_only=True refuses "
                           f"to load (a pickle payload never runs here; detail: {detail[:300]})",
                     "Load it where you trust it and save only its weights: `torch.save(model.state_dict(), path)`"
                     ) from None
    except Exception as err:  # noqa: BLE001 - torch.load raises many types for a file that is not a checkpoint
        raise _error(name, f"not a PyTorch checkpoint ({type(err).__name__}: {str(err).strip()[:200]})",
                     "Give a file written by torch.save (a state_dict) or a robustkd checkpoint") from None
    return _state_dict(obj, name)


def check_against(state: dict[str, torch.Tensor], model: torch.nn.Module, path: str) -> dict[str, torch.Tensor]:
    """``state`` completed with the model's optional buffers; an error listing every mismatching key."""
    want = model.state_dict()
    missing = [k for k in want if k not in state and k not in OPTIONAL_KEYS]
    unexpected = [k for k in state if k not in want]
    shapes = [f"{k} {list(state[k].shape)} (model: {list(want[k].shape)})" for k in want
              if k in state and state[k].shape != want[k].shape]
    if missing or unexpected or shapes:
        def listed(kind: str, keys: list[str]) -> str:
            more = f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
            return f"{kind} ({len(keys)}): {', '.join(keys[:SHOWN])}{more}" if keys else ""
        what = "; ".join(x for x in (listed("missing keys", missing), listed("unexpected keys", unexpected),
                                     listed("mismatched shapes", shapes)) if x)
        raise _error(path, f"does not fit the teacher's architecture: {what}",
                     "Set `teacher.arch`/`teacher.width` (or `training.*`) to the file's architecture, or give a "
                     "checkpoint of this one")
    return {k: (state[k] if k in state else want[k]).to(want[k].dtype) for k in want}


def load_state(path: str | Path, spec: dict) -> dict[str, torch.Tensor]:
    """The file's state_dict, checked against the model ``spec`` builds, ready for ``load_state_dict``."""
    model_args = {k: v for k, v in spec.items() if k != "label"}
    return check_against(read_file(path), build_model(**model_args), str(path))
