"""Screenshot a conformance report's HTML page in headless Chromium (the system's /usr/bin/chromium).

python tools/report_screenshot.py reports/conformance-report.html --output docs/report.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from harness.browser import CHROMIUM, open_page


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="the conformance-report.html to open")
    parser.add_argument("--output", "-o", type=Path, required=True, help="PNG to write")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument(
        "--until",
        default="Measured figures",
        help="stop at this heading (default: the figures table and below)",
    )
    args = parser.parse_args(argv)
    if not args.report.is_file():
        parser.error(f"no such file: {args.report}")
    if not CHROMIUM.is_file():
        parser.error(f"no Chromium at {CHROMIUM}")
    with open_page(args.width, 900) as page:
        page.goto(args.report.resolve().as_uri())
        page.wait_for_load_state("load")
        args.output.parent.mkdir(parents=True, exist_ok=True)
        heading = page.locator(f"h2:text-is('{args.until}')")
        bottom = heading.bounding_box() if heading.count() else None
        clip: Any = {"x": 0, "y": 0, "width": args.width, "height": bottom["y"]} if bottom else None
        page.screenshot(path=str(args.output), full_page=True, clip=clip)
    print(args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
