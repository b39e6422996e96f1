"""Screenshots for the documentation, taken in headless Chromium, and a look at the built site.

1. The report of a sweep (``report.html``): its Findings section and its metric-vs-layer
   figure, cut from the page as the browser renders it (the report's own stylesheet), to
   ``docs/images/report-findings.png`` (the getting-started page and the README show it).
2. The documentation site: ``mkdocs build --strict`` into a temporary folder, served on
   127.0.0.1, three pages (home, getting started, the CLI reference) rendered and checked
   (the theme's navigation, the page's title, for the CLI page every flag of the parser).

    apt-get install chromium
    python sweep.py                                       # the default sweep, then:
    python bench/docs_screenshots.py --report lmblocks-reports/lmblocks-default

Prints what it found; exit 1 if something did not render.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import re
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from browser_check import ink_share, render

PAGES = {"home": "", "getting-started": "getting-started/", "cli": "cli/"}


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # one line per request is noise here
        pass


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    handler = functools.partial(Quiet, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, f"http://127.0.0.1:{httpd.server_address[1]}/"


def report_excerpt(report: Path) -> str:
    """The report's head (its stylesheet), title, Findings section and layer figure."""
    page = (report / "report.html").read_text()
    head = page[:page.index("<body>") + len("<body>")]
    title = re.search(r"<h1>.*?</h1>", page).group(0)
    findings = re.search(r"<h2>Findings</h2>.*?</ul>", page, re.DOTALL)
    figure = re.search(r'<figure><img alt="metric_vs_layer".*?</figure>', page, re.DOTALL)
    if findings is None or figure is None:
        sys.exit(f"docs_screenshots: {report / 'report.html'} has no Findings section or no "
                 "metric_vs_layer figure (a sweep of one layer draws none)")
    return f"{head}{title}{findings.group(0)}{figure.group(0)}</body></html>"


def trim(png: Path, margin: int = 16) -> tuple[int, int]:
    """Cut the blank rows below the content (the window is taller than the excerpt)."""
    from PIL import Image, ImageChops

    image = Image.open(png).convert("RGB")
    box = ImageChops.difference(image, Image.new("RGB", image.size, "white")).getbbox()
    if box:
        image = image.crop((0, 0, image.width, min(image.height, box[3] + margin)))
    image.save(png, optimize=True)
    return image.size


def shoot_report(report: Path, png: Path) -> bool:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "excerpt.html").write_text(report_excerpt(report))
        httpd, url = serve(Path(tmp))
        try:
            dom = render(url + "excerpt.html", png, window="1200,2400")
        finally:
            httpd.shutdown()
    size = trim(png)
    claims = len(re.findall(r"<li>claim:", dom))
    print(f"report excerpt: {claims} claim lines, figure shown "
          f"{'metric_vs_layer' in dom}, {size[0]}x{size[1]} px, {png.stat().st_size:,} bytes "
          f"-> {png}")
    return claims > 0 and "metric_vs_layer" in dom and ink_share(png) > 0.02


def shoot_site(out: Path) -> bool:
    from orchestrator.cli_reference import parsers

    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir",
                               tmp], check=False, cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
        if done.returncode:
            print(done.stderr[-3000:])
            return False
        httpd, url = serve(Path(tmp))
        try:
            for name, path in PAGES.items():
                png = out / f"docs_{name}.png"
                dom = render(url + path, png, window="1280,1600")
                nav = "md-nav" in dom and "md-header" in dom
                title = re.search(r"<h1[^>]*>(.*?)</h1>", dom, re.DOTALL)
                text = re.sub(r"<[^>]+>", "", title.group(1)).strip() if title else None
                line = f"site {name}: title {text!r}, theme navigation {nav}"
                good = nav and bool(text)
                if name == "cli":
                    flags = {o for p in parsers() for a in p._actions for o in a.option_strings}
                    missing = sorted(f for f in flags if f not in dom)
                    line += f", flags {len(flags) - len(missing)}/{len(flags)}"
                    good &= not missing
                print(f"{line}, {ink_share(png):.1%} inked -> {png}")
                ok &= good
        finally:
            httpd.shutdown()
    return ok


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--report", required=True, help="folder holding report.html")
    p.add_argument("--image", default=str(ROOT / "docs" / "images" / "report-findings.png"))
    p.add_argument("--out", default="browser-check", help="the site's screenshots")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    Path(args.image).parent.mkdir(parents=True, exist_ok=True)
    ok = shoot_report(Path(args.report), Path(args.image))
    ok &= shoot_site(out)
    print("rendered" if ok else "NOT rendered")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
