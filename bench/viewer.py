"""The viewer through a real browser: time to first frame and frames per second at 256 x 256.

    python bench/viewer.py [--data ../shared/data/tabletop] [--run bench/out/viewer_tabletop]
                           [--train-time 120] [--size 256] [--seconds 15] [--viewport 800]

Trains Instant-NGP (``ngp-small``) on tabletop for ``--train-time`` seconds unless ``--run``
already holds a checkpoint, then serves ``radfield view``'s viewer (``Viewer.from_run``, full
frames capped at ``--size`` pixels) and opens it in Debian's headless Chromium (selenium) with
a square ``--viewport`` (the canvas), so full frames are ``size x size``, scaled up by the
browser. Frames are counted **in the browser**: a script in the page records (with
``performance.now()``) every change of the viewer's status line ``Frame N · W × H · T ms``,
which arrives in the same websocket batch as the image.

* time to first frame: from the start of navigation to the first frame (a preview) and to the first
  full-resolution frame shown in the page (the page's own load, scripts and WebGL set-up
  included);
* frames per second while the camera moves (it orbits the scene at 30 updates/s, set through
  viser's server-side camera handle, which moves the browser's camera; the browser reports
  back and the viewer renders): with ``dynamic`` off (every frame full, ``size x size``; a window
  of ``3 x --seconds``) and with the default lower resolution while moving.

Writes ``bench/results/viewer_tabletop.json`` and prints a markdown table for ``bench/RESULTS.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from radfield.config import PRESETS, RunConfig, apply_overrides  # noqa: E402
from radfield.training.trainer import Trainer  # noqa: E402
from radfield.viewer.render_loop import RenderSettings  # noqa: E402
from radfield.viewer.server import Viewer, ViewerOptions  # noqa: E402

RECORDER_JS = """
window.__frames = [];
let last = null;
setInterval(() => {
  const m = document.body && document.body.innerText.match(/Frame (\\d+) · (\\d+) × (\\d+)( \\(moving\\))? · (\\d+) ms/);
  if (m && m[1] !== last) {
    last = m[1];
    window.__frames.push([performance.now(), +m[1], +m[2], +m[3], !m[4], +m[5]]);
  }
}, 4);
"""

CANVAS_JS = """
let best = null;
for (const c of document.querySelectorAll('canvas')) {
  const r = c.getBoundingClientRect();
  if (!best || r.width * r.height > best.width * best.height) best = r;
}
return best ? [best.width, best.height] : null;
"""


def train_run(data: Path, run: Path, seconds: float) -> None:
    config = apply_overrides(RunConfig(), PRESETS["ngp-small"])
    config.data.path = str(data.resolve())
    config.train.max_time = seconds
    config.train.max_steps = 10 ** 9
    config.train.eval_every = 1e9
    config.train.val_images = 2
    Trainer(config, run, progress=True, log_tensorboard=False).train()


def browser(viewport: int):
    """Headless Chromium whose page viewport is ``viewport`` pixels square (viser's canvas fills
    the viewport; its control panel floats over the right side)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                f"--window-size={viewport},{viewport}", "--force-device-scale-factor=1", "--enable-unsafe-swiftshader", "--use-angle=swiftshader"]:
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(executable_path=shutil.which("chromedriver")), options=options)
    inner = driver.execute_script("return [window.innerWidth, window.innerHeight]")
    driver.set_window_size(2 * viewport - inner[0], 2 * viewport - inner[1])  # the window's own frame added
    return driver


def wait(predicate, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := predicate():
            return value
        time.sleep(0.005)
    raise TimeoutError(what)


def first_frames(driver, url: str) -> dict:
    """Seconds from the start of navigation (the page's ``performance.now()`` origin) to the first
    frame and to the first full frame in the page; the recorder runs from the page's start."""
    driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": RECORDER_JS})
    driver.get(url)
    frames = wait(lambda: (lambda fs: fs if any(f[4] for f in fs) else None)(
        driver.execute_script("return window.__frames || []")), 120, "a full frame")
    first, full = frames[0], next(f for f in frames if f[4])
    return {"first_frame_s": first[0] / 1000, "first_frame_size": first[2:4],
            "first_full_frame_s": full[0] / 1000, "full_frame_size": full[2:4]}


def orbit(camera, stop: threading.Event, rate: float = 30.0) -> None:
    """Move the browser's camera round its look-at point (world z up), ``rate`` times a second."""
    target = np.array(camera.look_at)
    offset = np.array(camera.position) - target
    radius, height = float(np.hypot(offset[0], offset[1])), float(offset[2])
    angle = math.atan2(offset[1], offset[0])
    while not stop.is_set():
        angle += 2 * math.pi / (10 * rate)  # one turn in 10 s
        camera.position = target + np.array([radius * math.cos(angle), radius * math.sin(angle), height])
        camera.look_at = target
        time.sleep(1 / rate)


def moving_fps(driver, viewer: Viewer, seconds: float, dynamic: bool) -> dict:
    viewer.dynamic.value = dynamic
    browser_view = next(iter(viewer.browsers.values()))
    stop = threading.Event()
    mover = threading.Thread(target=orbit, args=(browser_view.client.camera, stop), daemon=True)
    mover.start()
    time.sleep(1.0)  # settle into the moving regime
    driver.execute_script("window.__frames = [];")
    time.sleep(seconds)
    frames = driver.execute_script("return window.__frames")
    stop.set()
    mover.join()
    times = [f[0] / 1000 for f in frames]
    sizes = [f"{f[2]}x{f[3]}" for f in frames]
    # fewer than 3 frames in the window: frames / window, a bound from below
    fps = (len(frames) - 1) / (times[-1] - times[0]) if len(frames) > 2 else len(frames) / seconds
    return {"dynamic": dynamic, "frames": len(frames), "seconds": seconds, "fps": fps,
            "median_render_s": statistics.median(f[5] for f in frames) / 1000 if frames else None,
            "median_interval_s": statistics.median(np.diff(times)) if len(frames) > 2 else None,
            "sizes": sorted(set(sizes), key=sizes.count, reverse=True)[:3],
            "most_common_size": max(set(sizes), key=sizes.count) if sizes else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "tabletop"))
    parser.add_argument("--run", default=str(ROOT / "bench" / "out" / "viewer_tabletop"))
    parser.add_argument("--train-time", type=float, default=120.0)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--viewport", type=int, default=800, help="square browser viewport (the canvas) in pixels")
    args = parser.parse_args()
    run = Path(args.run)
    trained = not (run / "checkpoint.pt").is_file()
    if trained:
        print(f"training ngp-small on {args.data} for {args.train_time:.0f} s -> {run}", flush=True)
        train_run(Path(args.data), run, args.train_time)
    viewer = Viewer.from_run(run, "cpu", ViewerOptions(port=0, render=RenderSettings(max_size=args.size)))
    driver = browser(args.viewport)
    try:
        result = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.processor()
                  or platform.machine(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                  "run": str(run), "trained_now": trained, "train_time_s": args.train_time, "size": args.size}
        result.update(first_frames(driver, viewer.url))
        result["canvas"] = driver.execute_script(CANVAS_JS)
        result["full_frames_moving"] = moving_fps(driver, viewer, 3 * args.seconds, dynamic=False)
        result["dynamic_moving"] = moving_fps(driver, viewer, args.seconds, dynamic=True)
        browser_view = next(iter(viewer.browsers.values()))
        result["render_seconds_per_pixel"] = browser_view.loop.seconds_per_pixel
    finally:
        driver.quit()
        viewer.close()
    out = ROOT / "bench" / "results" / "viewer_tabletop.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    full, dyn = result["full_frames_moving"], result["dynamic_moving"]
    print("\n| what | value |\n| --- | --- |")
    print(f"| time to first frame (preview, {'x'.join(map(str, result['first_frame_size']))}) | "
          f"{result['first_frame_s']:.2f} s |")
    print(f"| time to first full frame ({'x'.join(map(str, result['full_frame_size']))}) | "
          f"{result['first_full_frame_s']:.2f} s |")
    for name, m in [("every frame full", full), ("lower resolution while moving", dyn)]:
        print(f"| frames/s, camera moving, {name} ({m['most_common_size']}; {m['frames']} frames in "
              f"{m['seconds']:.0f} s; median render {m['median_render_s']:.2f} s) | {m['fps']:.2f} |")


if __name__ == "__main__":
    main()
