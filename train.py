"""The original project's training entry point, with its original flags, on the new core.

Each flag maps onto `ebm.training.TrainConfig`; the energy stage runs persistent contrastive
divergence for `ebm_num_epochs` passes over the training codes. Equivalent to `python -m ebm train`.
"""

import argparse
import math

from ebm.cli import build_parser, run_train

TRAIN_IMAGES = 60_000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--auto_hidden_dim", type=int, default=1024)
    p.add_argument("--encoded_dim", type=int, default=4)
    p.add_argument("--auto_num_epochs", type=int, default=30)
    p.add_argument("--auto_batch_size", type=int, default=64)
    p.add_argument("--auto_lr", type=float, default=3e-4)
    p.add_argument("--ebm_hidden_dim", type=int, default=8)
    p.add_argument("--ebm_num_epochs", type=int, default=3)
    p.add_argument("--ebm_batch_size", type=int, default=1024)
    p.add_argument("--ebm_lr", type=float, default=3e-4)
    p.add_argument("--mcmc_samples_per_datapoint", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    iterations = a.ebm_num_epochs * math.ceil(TRAIN_IMAGES / a.ebm_batch_size)
    run_train(build_parser().parse_args([
        "train", "--ae-hidden-dim", str(a.auto_hidden_dim), "--latent-dim", str(a.encoded_dim),
        "--ae-epochs", str(a.auto_num_epochs), "--ae-batch-size", str(a.auto_batch_size), "--ae-lr", str(a.auto_lr),
        "--ebm-hidden-dim", str(a.ebm_hidden_dim), "--ebm-iterations", str(iterations),
        "--ebm-batch-size", str(a.ebm_batch_size), "--ebm-lr", str(a.ebm_lr),
        "--negatives-per-datapoint", str(a.mcmc_samples_per_datapoint), "--seed", str(a.seed),
    ]))


if __name__ == "__main__":
    main()
