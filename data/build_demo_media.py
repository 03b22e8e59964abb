"""Build data/media/clip.webm, the demo origin's seekable video (committed; rerun to change).

Needs PyAV (`pip install av numpy`), which is not a dependency of the project:
the file is built once and kept in the repository, like demo-city.mmdb.
Twenty seconds of 320x240 VP8 at 25 fps, a key frame every second (so a seek
lands anywhere), each second a different colour with a bar that sweeps across, over grain
(about 1.5 MB, so a browser seeks with range requests rather than one read).
"""
from __future__ import annotations

import colorsys
from pathlib import Path

import av
import numpy as np

SECONDS, FPS, WIDTH, HEIGHT = 20, 25, 320, 240
OUT = Path(__file__).with_name("media") / "clip.webm"


def frame(index: int) -> np.ndarray:
    second, step = divmod(index, FPS)
    r, g, b = colorsys.hsv_to_rgb(second / SECONDS, 0.6, 0.9)
    img = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)
    img[:] = (int(r * 255), int(g * 255), int(b * 255))
    x = step * WIDTH // FPS
    img[HEIGHT // 2 - 10:HEIGHT // 2 + 10, x:x + 12] = 255
    img[:12, : (second + 1) * WIDTH // SECONDS] = 0          # a progress strip
    # Grain, so the file has a realistic bitrate and a browser must fetch ranges to seek.
    noise = np.random.default_rng(index).integers(0, 48, (HEIGHT, WIDTH, 1), dtype=np.uint8)
    return np.clip(img.astype(np.int16) + noise - 24, 0, 255).astype(np.uint8)


def main() -> None:
    OUT.parent.mkdir(exist_ok=True)
    with av.open(str(OUT), "w", format="webm") as container:
        stream = container.add_stream("libvpx", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        stream.bit_rate = 600_000
        stream.options = {"g": str(FPS), "keyint_min": str(FPS)}
        for i in range(SECONDS * FPS):
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame(i), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    print(f"{OUT}: {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main()
