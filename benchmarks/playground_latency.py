"""Knob-to-redraw latency of the playground in a real browser (issue 11: at most 1.5 s at defaults).

    python benchmarks/playground_latency.py [--moves 5]

Starts `marimo edit` on a copy of the notebook (loopback), opens it in headless Debian Chromium, waits for the
charts, then moves the "styles (drift)" slider one step at a time (keyboard, as a user's arrow key): each move is
a setting not run before, so the simulator runs again. A move is redrawn when the URL carries the new value, the
results table changed, no cell is running or queued and the first screens' charts are drawn (the heatmaps, the
schedule, the topology and the token inspector are `mo.lazy`: they are computed when scrolled to). Then the
slider goes back to a setting already run (cached: no simulator run). Prints a table, last
`knob_to_redraw_s=<median of new settings>`.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from playground_browser import chromium, marimo_server, results_row, settled, slider, wait_for

LEFT, RIGHT = "\ue012", "\ue014"
FIRST = 2  # the styles the page opens with; the moves stay below the default 8, so the URL always carries them


def move(driver, key: str, value: int) -> float:
    """Seconds from one arrow key on the styles slider to the redrawn page (the slider then at `value`)."""
    knob = slider(driver, "styles (drift)")
    before = results_row(driver)
    driver.execute_script("arguments[0].focus()", knob)
    start = time.perf_counter()
    knob.send_keys(key)
    done = wait_for(lambda: f"styles={value}" in driver.current_url and results_row(driver) != before
                    and settled(driver), 60, step=0.01)
    if not done:
        raise RuntimeError(f"the page did not redraw after moving styles to {value}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--moves", type=int, default=5, help="moves to new settings (at most 5)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, marimo_server(Path(folder)) as url, chromium() as driver:
        start = time.perf_counter()
        driver.get(url + f"/?styles={FIRST}")
        if not wait_for(lambda: settled(driver), 120):
            raise RuntimeError("the playground did not render")
        opened = time.perf_counter() - start
        fresh = [move(driver, RIGHT, FIRST + i + 1) for i in range(args.moves)]
        cached = move(driver, LEFT, FIRST + args.moves - 1)
    print(f"{'case':56s} seconds")
    print(f"{'open the page to charts drawn (first run)':56s} {opened:7.2f}")
    for i, seconds in enumerate(fresh):
        print(f"{f'move styles to {FIRST + i + 1} (a new setting: the simulator runs)':56s} {seconds:7.2f}")
    print(f"{'move back to a setting already run (cached)':56s} {cached:7.2f}")
    print(f"knob_to_redraw_s={statistics.median(fresh):.3f}")


if __name__ == "__main__":
    main()
