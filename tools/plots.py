"""`dvc plots show` / `dvc plots diff` that check for the offline plots page first and start from a clean folder.

    python3 tools/plots.py show [dvc plots show options]
    python3 tools/plots.py diff [revisions] [dvc plots diff options]

DVC reads `.dvc/plots_template.html` (``plots.html_template`` in `.dvc/config`), built by
tools/build_plots_template.py; when it is missing DVC only says "HTML template has to contain '{plot_divs}'", so this
says in one line how to build it. DVC also leaves the images of earlier runs in `<out>/static` (e.g. a
`dvc plots diff` of other revisions); this empties that folder first. Everything else is DVC's own command.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

TEMPLATE = Path(".dvc") / "plots_template.html"  # tools/build_plots_template.py's output, in the DVC repo
BUILD_HINT = (f"{TEMPLATE} is missing (Vega, Vega-Lite and vega-embed for offline plots): build it with "
              "`python3 tools/build_plots_template.py` (.ci/setup does), then rerun.")


def _repo_root(start: Path) -> Path:
    """The DVC repository the command runs in, as DVC finds it: the nearest folder up with a .dvc folder."""
    for folder in (start, *start.parents):
        if (folder / ".dvc").is_dir():
            return folder
    return start


def _out_dir(args: list[str]) -> Path:
    """The folder DVC writes to: -o/--out, else DVC's default."""
    for i, arg in enumerate(args):
        if arg in ("-o", "--out") and i + 1 < len(args):
            return Path(args[i + 1])
        if arg.startswith("--out="):
            return Path(arg.split("=", 1)[1])
        if arg.startswith("-o") and len(arg) > 2:
            return Path(arg[2:])
    return Path("dvc_plots")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("show", "diff"):
        print(__doc__.strip().splitlines()[2] + "\n" + __doc__.strip().splitlines()[3], file=sys.stderr)
        return 2
    args = argv[1:]
    own_template = any(a == "--html-template" or a.startswith("--html-template=") for a in args)
    if not own_template and not (_repo_root(Path.cwd().resolve()) / TEMPLATE).is_file():
        print(BUILD_HINT, file=sys.stderr)
        return 1
    static = _out_dir(args) / "static"
    if "--json" not in args and static.is_dir():
        shutil.rmtree(static)
    return subprocess.run(["dvc", "plots", argv[0], *args]).returncode


if __name__ == "__main__":
    sys.exit(main())
