"""``python tools/gallery_screenshot.py --out docs/gallery_1400.png``: the gallery as a browser shows it.

Proposes key patches for the example photos with two settings side by side (``greedy`` and
``ranked``, whose card carries the most options), writes ``keypatch report``, opens it in headless
Chromium at 1400 px wide, photographs it, and checks in the browser that every card lies inside the
page (no card or title wider than the window). Needs Chromium (Debian's ``chromium``; ``--chromium``
names another binary). Prints the check's numbers; exits 1 when a card sticks out.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

CHECK = """<script>
window.addEventListener('load', () => {
  const w = document.documentElement.clientWidth;
  const boxes = Array.from(document.querySelectorAll('.card, .card h3')).map(e => e.getBoundingClientRect());
  const out = {window: w, cards: document.querySelectorAll('.card').length,
               widest_right: Math.max(...boxes.map(b => b.right)),
               outside: boxes.filter(b => b.right > w + 0.5 || b.left < -0.5).length,
               page_width: document.documentElement.scrollWidth};
  const pre = document.createElement('pre'); pre.id = 'kp-check'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def chromium(binary: str, *args: str) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--no-first-run", "--disable-sync", "--hide-scrollbars"]
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([binary, *flags, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                              timeout=300, check=True).stdout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("docs/gallery_1400.png"))
    ap.add_argument("--photos", type=Path, default=Path("examples"))
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=1500)
    args = ap.parse_args()
    from keypatch.cli.main import main as keypatch

    work = Path(tempfile.mkdtemp(prefix="gallery-"))
    for strategy in ("greedy", "ranked"):
        rc = keypatch(["propose", str(args.photos), "--ratio", str(args.ratio), "--strategy", strategy,
                       "--out", str(work), "--quiet"])
        if rc:
            return rc
    if keypatch(["report", "--out", str(work), "--quiet"]):
        return 1
    index = work / "report" / "index.html"
    checked = index.with_name("checked.html")
    checked.write_text(index.read_text().replace("</body>", CHECK + "</body>"))
    size = f"--window-size={args.width},{args.height}"
    dom = chromium(args.chromium, size, "--virtual-time-budget=5000", "--dump-dom", checked.as_uri())
    found = re.search(r'<pre id="kp-check">(.*?)</pre>', dom)
    if not found:
        print("the page's check did not run", file=sys.stderr)
        return 1
    result = json.loads(found.group(1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    chromium(args.chromium, size, "--virtual-time-budget=5000", f"--screenshot={args.out.absolute()}", index.as_uri())
    print(json.dumps({**result, "screenshot": str(args.out)}))
    return 0 if result["outside"] == 0 and result["page_width"] <= result["window"] else 1


if __name__ == "__main__":
    sys.exit(main())
