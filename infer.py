"""The original project's sampling entry point: `python infer.py --num_images 10`.

Draws digits from the shipped model with the default sampler settings and writes
samples/grid.png and samples/chains.gif instead of opening a plot window.
"""

import argparse

from ebm.cli import build_parser, run_sample


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--num_images", type=int, default=10)
    p.add_argument("--weights", default=None, help="weights file (default: the shipped model)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    argv = ["sample", "--num-images", str(a.num_images), "--seed", str(a.seed)]
    if a.weights:
        argv += ["--weights", a.weights]
    run_sample(build_parser().parse_args(argv))


if __name__ == "__main__":
    main()
