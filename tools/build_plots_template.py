"""Build .dvc/plots_template.html: DVC's HTML page for `dvc plots show`/`diff` with Vega, Vega-Lite and vega-embed
inline, so the interactive plots render without the internet.

dvc-render's default page loads the three libraries from a CDN (cdn.jsdelivr.net); `.dvc/config` points DVC at this
file instead (``plots.html_template``). The page has no ``{scripts}`` placeholder, so DVC adds no CDN tag. The
libraries come from their npm packages, pinned by version and sha512 (``npm pack``; without npm, a download of the
same tarball from registry.npmjs.org). Run by .ci/setup; the output is a build artifact, ignored by git.

    python3 tools/build_plots_template.py [--force] [--out PATH]
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".dvc" / "plots_template.html"
# (package, version, dist.integrity from `npm view <pkg>@<version> dist.integrity`, UMD bundle in the tarball).
# Vega-Lite 5.x reads the "$schema": ".../vega-lite/v5.json" specs that dvc-render and .dvc/plots/ write; it needs
# vega ^5.24; vega-embed 6.x works with both.
PACKAGES = (
    ("vega", "5.33.1",
     "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==",
     "package/build/vega.min.js"),
    ("vega-lite", "5.23.0",
     "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==",
     "package/build/vega-lite.min.js"),
    ("vega-embed", "6.29.0",
     "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==",
     "package/build/vega-embed.min.js"),
)
STAMP = "robustkd plots template: " + " ".join(f"{name}@{version}" for name, version, _, _ in PACKAGES)
PLACEHOLDERS = ("{plot_divs}", "{scripts}", "{refresh_tag}")  # what dvc-render's HTML.embed replaces

# vegaEmbed is called by dvc-render as vegaEmbed('#id', spec): the wrapper makes SVG the default renderer, so the
# drawn plot is in the DOM (the headless-browser test reads it) and prints sharply.
PAGE = """<!DOCTYPE html>
<!-- {stamp}. Built by tools/build_plots_template.py; do not edit. -->
<html>
<head>
    {{refresh_tag}}
    <meta charset="utf-8">
    <title>DVC Plot</title>
{libraries}
    <script type="text/javascript">
    (function () {{
        var embed = window.vegaEmbed;
        window.vegaEmbed = function (el, spec, opt) {{
            return embed(el, spec, Object.assign({{renderer: "svg"}}, opt || {{}}));
        }};
    }})();
    </script>
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def _integrity(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def fetch_tarball(name: str, version: str, workdir: Path) -> bytes:
    """The package's npm tarball: `npm pack` (the user's npm registry and proxy settings), else registry.npmjs.org."""
    if shutil.which("npm"):
        subprocess.run(["npm", "pack", "--silent", f"{name}@{version}", "--pack-destination", str(workdir)],
                       check=True, stdout=subprocess.DEVNULL, cwd=workdir)
        return (workdir / f"{name}-{version}.tgz").read_bytes()
    url = f"https://registry.npmjs.org/{name}/-/{name}-{version}.tgz"
    with urllib.request.urlopen(url, timeout=60) as response:
        return response.read()


def script_tag(name: str, version: str, js: str) -> str:
    for placeholder in PLACEHOLDERS:
        if placeholder in js:
            raise SystemExit(f"{name}@{version} contains {placeholder!r}: DVC would replace it inside the script")
    # "</script" would end the inline <script> element early; "<\/script" means the same in JavaScript.
    js = js.replace("</script", "<\\/script").replace("</SCRIPT", "<\\/SCRIPT")
    return f'    <script type="text/javascript">/* {name}@{version} */\n{js}\n    </script>'


def build(out: Path) -> None:
    tags = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, version, integrity, member in PACKAGES:
            data = fetch_tarball(name, version, Path(tmp))
            if _integrity(data) != integrity:
                raise SystemExit(f"{name}@{version}: tarball sha512 {_integrity(data)} is not the pinned {integrity}")
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                js = tar.extractfile(member).read().decode("utf-8")
            tags.append(script_tag(name, version, js))
    page = PAGE.format(stamp=STAMP, libraries="\n".join(tags))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_text(page, encoding="utf-8")
    os.replace(tmp_out, out)


def is_current(path: Path) -> bool:
    """The file exists and was built from the pinned versions."""
    try:
        with path.open(encoding="utf-8") as f:
            head = f.read(512)
    except OSError:
        return False
    return STAMP in head


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT, help="where to write the page (default: %(default)s)")
    ap.add_argument("--force", action="store_true", help="rebuild even if the page is current")
    args = ap.parse_args(argv)
    if not args.force and is_current(args.out):
        return 0
    build(args.out)
    print(f"wrote {os.path.relpath(args.out)} ({args.out.stat().st_size // 1024} KiB): {STAMP.split(': ')[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
