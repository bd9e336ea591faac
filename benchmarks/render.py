"""Where one default Sample request's time goes: chains, decoding the shown frames, GIF, PNG.

One thread, as the app runs each request (`widgets.configure_process`). The GIF line compares, in
the same run, how the app encodes it (`ebm.images.gif_bytes`: a gray palette, one screen pixel per
pixel, the browser scales it) with the previous way (imageio's Pillow writer, which quantizes
every frame to a palette, at scale 2).
Run: python -m benchmarks.render [--repeats 5]
"""

from __future__ import annotations

import time

import imageio.v3 as iio
import numpy as np
import torch

from benchmarks.machine import cpu_model, one_thread_setup
from ebm.generate import SampleSettings, chain_frames, decode_binary, sample_chains
from ebm.images import gif_bytes, image_grid, png_bytes
from ebm.limits import MAX_GIF_CHAINS, MAX_GIF_FRAMES, frame_indices
from ebm.render import sample_view


def best_of(repeats: int, fn) -> float:
    """Fastest of `repeats` calls, in milliseconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main() -> None:
    args, model = one_thread_setup(__doc__.splitlines()[0])
    settings = SampleSettings()
    result = sample_chains(model, settings)
    shown = result.trajectory[frame_indices(len(result.trajectory), MAX_GIF_FRAMES), :MAX_GIF_CHAINS]
    frames1 = chain_frames(model, shown, scale=1)
    frames2 = chain_frames(model, shown, scale=2)
    final = decode_binary(model, result.state.position)
    print(f"CPU: {cpu_model()}; torch {torch.get_num_threads()} thread; {settings.num_chains} chains x "
          f"{settings.num_steps} MALA steps, {len(frames1)} frames; best of {args.repeats}, ms")
    rows = [
        ("chains", best_of(args.repeats, lambda: sample_chains(model, settings))),
        ("decode shown frames", best_of(args.repeats, lambda: chain_frames(model, shown, scale=1))),
        ("GIF, gray palette, scale 1 (app)", best_of(args.repeats, lambda: gif_bytes(frames1))),
        ("GIF, imageio quantized, scale 2 (before)", best_of(args.repeats, lambda: iio.imwrite(
            "<bytes>", np.stack(frames2), extension=".gif", duration=80, loop=0))),
        ("PNG of the final grid, scale 2", best_of(args.repeats, lambda: png_bytes(image_grid(final, scale=2)))),
        ("whole request (ebm.render.sample_view)", best_of(args.repeats, lambda: sample_view(model, settings))),
    ]
    for name, ms in rows:
        print(f"{name:>42} {ms:8.1f}")


if __name__ == "__main__":
    main()
