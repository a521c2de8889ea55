"""Merge a preset (a partial params file) into params.yaml, validate the result, write it atomically.

    python tools/apply_preset.py src/presets/cifar10.yaml && dvc repro
    python tools/apply_preset.py src/presets/cifar10.yaml --dry-run     # print the merged params only
"""
import argparse
import copy
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # `python tools/apply_preset.py` imports robustkd from src/
from robustkd import params as schema  # noqa: E402
from robustkd.errors import ParamsError  # noqa: E402
from robustkd.io import atomic_write_text  # noqa: E402


def merge(base: dict, patch: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in patch.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", type=Path)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    try:
        merged = schema.validate(merge(schema.read_yaml(args.params.read_text()), schema.read_yaml(args.preset.read_text())))
    except ParamsError as err:
        sys.exit(f"error: {args.preset} does not give valid params:\n{err}")
    text = yaml.safe_dump(merged, sort_keys=False, width=120)
    if args.dry_run:
        print(text)
    else:
        atomic_write_text(args.params, text)
        print(f"{args.params}: applied {args.preset} (comments in params.yaml are not kept; git diff shows the change)")


if __name__ == "__main__":
    main()
