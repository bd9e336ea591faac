"""How much of an EBM's sample FID is its chains and how much its density: the same model's samples drawn four ways.

- MALA from noise, K = 500: what `python -m ebm evaluate` and the app draw (`SampleSettings` defaults);
- MALA from noise, K = 2,000: the same chains run four times longer;
- MALA from data codes, K = 500;
- exact draws from exp(-E): importance resampling of a pool of proposal draws (`ebm.importance`'s
  GMM + Student-t proposal that checks log Z), weighted by exp(-E) / q. In 4-D the weights' effective
  sample size is a large share of the pool, so these are draws of the density itself, whatever the chains do.

Each is decoded and scored like `evaluate` (10,000 images, the project's classifier, against the test set).
If the four agree, the chains have mixed and the FID is the density's; if K = 500 reads worse than the
exact draws, the gap is the sampler's. Run: python -m benchmarks.sample_fid [--weights W] [--pool 400000]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.machine import cpu_model  # noqa: E402
from ebm.checkpoint import SHIPPED_WEIGHTS, load_model  # noqa: E402
from ebm.classifier import load_classifier  # noqa: E402
from ebm.data import load_binarized  # noqa: E402
from ebm.generate import SampleSettings, decode_binary, sample_chains  # noqa: E402
from ebm.importance import proposal_draws  # noqa: E402
from ebm.metrics import Reference, image_metrics  # noqa: E402
from ebm.threads import limit_native_threads  # noqa: E402

NUM_IMAGES = 10_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", type=Path, default=SHIPPED_WEIGHTS)
    parser.add_argument("--pool", type=int, default=400_000, help="proposal draws the exact samples are resampled from")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    limit_native_threads()
    torch.set_num_threads(1)
    print(f"CPU: {cpu_model()}; {args.weights}, {NUM_IMAGES:,} images each, seed {args.seed}", flush=True)
    model, _ = load_model(args.weights)
    train, _ = load_binarized("mnist", "train", None)
    test, _ = load_binarized("mnist", "test", None)
    classifier, _ = load_classifier()
    reference = Reference.from_features(classifier.predict(test)[0].numpy())
    codes = torch.cat([model.encode(chunk) for chunk in train.split(8192)])

    def report(name: str, samples: torch.Tensor) -> None:
        m = image_metrics(classifier, decode_binary(model, samples), reference)
        print(f"{name}: FID {m['fid']:.2f}, smallest class {m['class_min_share']:.4f}, "
              f"precision {m['precision']:.3f}, recall {m['recall']:.3f}", flush=True)

    for label, options in (("MALA from noise, K = 500", {}), ("MALA from noise, K = 2,000", {"num_steps": 2000}),
                           ("MALA from data, K = 500", {"start": "data"})):
        settings = SampleSettings(num_chains=NUM_IMAGES, seed=args.seed, **options)
        report(label, sample_chains(model, settings, codes).state.position)
    draws, log_q = (torch.from_numpy(a).float() for a in proposal_draws(codes, args.pool, seed=args.seed))
    with torch.no_grad():
        energies = torch.cat([model.energy(chunk) for chunk in draws.split(65_536)])
    weights = torch.softmax(-energies - log_q, 0)
    picked = torch.multinomial(weights, NUM_IMAGES, replacement=True,
                               generator=torch.Generator().manual_seed(args.seed))
    ess = 1 / weights.square().sum().item()
    report(f"exact: importance resampling ({args.pool:,} draws, weight ESS {ess:,.0f})", draws[picked])


if __name__ == "__main__":
    main()
