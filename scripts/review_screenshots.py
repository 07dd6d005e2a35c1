"""The README's pictures of the Kangas review page, taken from a served run folder by headless
Debian chromium driven over its DevTools pipe (no browser driver to install).

    python scripts/review_screenshots.py OUTPUTS GRID_ID OUT_DIR [--word N] [--grid-only]
                                         [--sort COLUMN] [--filter EXPR]

OUTPUTS is served as ``make kangas`` serves it (captioning.review); GRID_ID is a grid's path
relative to it (``2026-12-07/03-22-21/predictions/final.datagrid``). Writes OUT_DIR/grid.png
(the grid as it opens) and OUT_DIR/attention.png (the first row expanded, every attention
layer hidden but word N's, clicked off one by one as a reviewer would; not with --grid-only).
--sort opens the grid sorted by COLUMN, largest first, and --filter with only the rows that pass
EXPR (``{"id"} == "190.jpg"``): Kangas's own ``sort``/``descending``/``filter`` URL parameters, as
its Sort By button and filter box set them.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from captioning.review import grid_link, start, stop, wait_until_up  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class Browser:
    """Chromium with ``--remote-debugging-pipe``: DevTools messages as NUL-terminated JSON on
    fds 3 (to the browser) and 4 (from it); one page, attached in flat mode."""

    def __init__(self, size: tuple[int, int]):
        to_r, self.to_w = os.pipe()
        self.from_r, from_w = os.pipe()
        self.profile = tempfile.mkdtemp(prefix="review-shots-")
        cmd = ["chromium", *FLAGS, "--remote-debugging-pipe", f"--user-data-dir={self.profile}",
               f"--window-size={size[0]},{size[1]}", "about:blank"]

        def pipe_fds():               # via free high numbers: to_r or from_w may be 3 or 4
            high = (os.dup2(to_r, 250), os.dup2(from_w, 251))
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen(cmd, pass_fds=(3, 4), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, preexec_fn=pipe_fds)
        os.close(to_r)
        os.close(from_w)
        self.buffer, self.next_id, self.session = b"", 0, None
        page = next(t for t in self.call("Target.getTargets")["targetInfos"]
                    if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"],
                                 flatten=True)["sessionId"]

    def call(self, method: str, **params):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self.to_w, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self.buffer:
                self.buffer += os.read(self.from_r, 1 << 20)
            raw, self.buffer = self.buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def js(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression,
                         returnByValue=True)["result"].get("value")

    def shot(self, path: Path) -> None:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


# The expanded view's layer chips read "attention: 03 circle"; clicking one hides that word.
CHIPS = """[...document.querySelectorAll('div')].filter(
    d => d.children.length === 0 && /^attention: \\d\\d /.test(d.textContent))"""


def take(url: str, out: Path, word: int | None) -> list[str]:
    from PIL import Image

    browser = Browser((1720, 760))
    try:
        browser.call("Page.navigate", url=url)
        time.sleep(15)
        browser.shot(out / "grid.png")
        with Image.open(out / "grid.png") as im:                      # the first five rows
            im = im.crop((0, 0, im.width, 350)).convert("RGB").quantize(256)
            im.save(out / "grid.png", optimize=True)
        if word is None:
            return []
        browser.js("document.querySelector('img[alt=\"DataGrid Image\"]').click()")
        time.sleep(10)
        chips = browser.js(f"{CHIPS}.map(d => d.textContent)") or []
        for i, chip in enumerate(chips):
            if not chip.startswith(f"attention: {word:02d} "):
                browser.js(f"{CHIPS}[{i}].click()")
                time.sleep(1)
        time.sleep(2)
        shown = browser.js(f"{CHIPS}.filter(d => !/disabled/.test(d.className))"
                           ".map(d => d.textContent)")
        browser.shot(out / "attention.png")
        with Image.open(out / "attention.png") as im:                 # the expanded cell
            im = im.crop((int(im.width * 0.21), 0, int(im.width * 0.79), im.height))
            im.convert("RGB").quantize(256).save(out / "attention.png", optimize=True)
        return [f"{c} ({'on' if c in shown else 'off'})" for c in chips]
    finally:
        browser.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("outputs", type=Path)
    p.add_argument("grid")
    p.add_argument("out", type=Path)
    p.add_argument("--word", type=int, default=2, help="the word whose layer stays on")
    p.add_argument("--grid-only", action="store_true", help="only grid.png")
    p.add_argument("--sort", metavar="COLUMN", help="open the grid sorted by COLUMN, descending")
    p.add_argument("--filter", metavar="EXPR", help='only the rows passing EXPR: {"id"} == "1.jpg"')
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    proc, url, _ = start(args.outputs, datagrid=args.grid)
    try:
        if not wait_until_up(url, proc=proc):
            print(f"kangas server did not come up; log: {proc.log_path}", file=sys.stderr)
            return 1
        link = grid_link(url, args.outputs, args.outputs / args.grid)
        view = {**({"sort": args.sort, "descending": "true"} if args.sort else {}),
                **({"filter": args.filter} if args.filter else {})}
        if view:
            link += "&" + urllib.parse.urlencode(view)
        chips = take(link, args.out,
                     None if args.grid_only else args.word)
        print(f"layers: {chips}\nwrote {args.out / 'grid.png'}, {args.out / 'attention.png'}")
    finally:
        stop(proc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
