"""Command line: `python -m ebm train | sample | evaluate | score | inpaint | train-classifier |
train-latent-classifier`.

Every command is a thin wrapper over the package: argument parsing, tqdm progress, files.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import __version__
from .checkpoint import SHIPPED_WEIGHTS, WeightsError, check_weights_path, load_model, model_to_bytes, write_atomically
from .classifier import (
    add_train_classifier_arguments,
    classifier_path,
    load_classifier,
    run_train_classifier,
)
from .conditioning import (
    ClassSettings,
    class_shares,
    latent_accuracy,
    latent_classifier_path,
    load_latent_classifier,
    sample_classes,
    save_latent_classifier,
    train_latent_classifier,
)
from .data import DEFAULT_THRESHOLD, DatasetError, default_data_dir, load_binarized
from .energies import HIDDEN_HALVES, INPAINTING
from .evaluation import DEFAULT_OUT_DIR, evaluate, report_markdown
from .generate import SampleSettings, chain_frames, decode_binary, sample_chains
from .images import gif_bytes, image_grid, png_bytes
from .playground import inpaint_view
from .preprocess import ImageError, preprocess_bytes
from .runs import WEIGHTS_NAME, RunsDirError, check_room, check_runs_dir, default_runs_dir, save_run
from .samplers import SAMPLERS, all_param_specs, param_specs
from .scoring import build_reference, prior_log_z, score_image
from .threads import limit_native_threads
from .training import DivergenceError, TrainConfig, build_model, run_metadata, train, weights_bytes
from .validation import Spec, argparse_type, spec


def setting_flag(p: argparse.ArgumentParser, cls, name: str, *flags: str, **kwargs) -> None:
    """A flag for setting `name` of settings dataclass `cls`: its default, help and check are the setting's own."""
    s = spec(cls, name)
    kwargs.setdefault("help", s.help or s.label or None)
    if s.kind == "choice":
        kwargs["choices"] = s.choices
    else:
        kwargs["type"] = argparse_type(s, name)
    default = next(f.default for f in fields(cls) if f.name == name)
    p.add_argument(*(flags or ("--" + name.replace("_", "-"),)), dest=name, default=default, **kwargs)


def pick_device(name: str) -> str:
    """The device `name`, once checked: exits with one sentence when CUDA is asked for but absent."""
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda requested but no CUDA device is available")
    return name


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field, with its default, so the CLI and the config never drift apart."""
    for f in fields(TrainConfig):
        setting_flag(p, TrainConfig, f.name)
    p.add_argument("--data-dir", type=Path, default=None, help="dataset root (default $EBM_DATA_DIR or data/)")
    p.add_argument("--runs-dir", type=Path, default=None,
                   help="where the trained weights go (default $EBM_RUNS_DIR or runs/)")
    p.add_argument("--out", type=Path, default=None, help="weights file to write (default: a new folder in --runs-dir)")


def _destination(args: argparse.Namespace) -> tuple[str, str]:
    """Where the weights go, in words, and the flag that picks another place."""
    if args.out is not None:
        return f"the folder of --out {args.out.parent}", "--out"
    return f"the runs folder {args.runs_dir or default_runs_dir()}", "--runs-dir"


def check_destination(args: argparse.Namespace, cfg: TrainConfig) -> None:
    """Before training: exit with one sentence if the weights could not be saved where asked."""
    try:
        if args.out is None:
            check_room(check_runs_dir(args.runs_dir or default_runs_dir()), weights_bytes(cfg))
        else:
            check_room(check_weights_path(args.out).parent, weights_bytes(cfg))
    except RunsDirError as e:
        where, flag = _destination(args)
        raise SystemExit(f"error: {where} {e.reason}; pick another place with {flag}") from None
    except ValueError as e:  # WeightsError is one: the shipped weights folder
        raise SystemExit(f"error: {e}") from None


def save_trained(model, cfg: TrainConfig, args: argparse.Namespace) -> Path:
    """Save the trained model where asked; if that fails, in a fresh temp folder, and say so.

    Exits non-zero only when neither could be written: the model is never lost silently.
    """
    data = model_to_bytes(model.cpu(), run_metadata(cfg))
    try:
        if args.out is None:
            return save_run(data, cfg.dataset, runs_dir=args.runs_dir)
        return write_atomically(check_weights_path(args.out), data)
    except OSError as e:  # RunsDirError is one
        reason = e.reason if isinstance(e, RunsDirError) else f"could not be written ({e.strerror or type(e).__name__})"
    where, flag = _destination(args)
    folder = None
    try:
        folder = Path(tempfile.mkdtemp(prefix="mnist-ebm-"))
        fallback = write_atomically(folder / WEIGHTS_NAME, data)
    except OSError as e:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise SystemExit(f"error: {where} {reason}, and the temp folder could not be written either "
                         f"({e.strerror or type(e).__name__}), so the trained model is lost; free some disk space "
                         f"or pick another place with {flag}") from None
    print(f"warning: {where} {reason}, so the trained model was saved to {fallback} instead; "
          f"pick another place with {flag} next time", file=sys.stderr)
    return fallback


def run_train(args: argparse.Namespace) -> Path:
    """`train`: check the settings and the destination first, train with tqdm bars, save; returns the weights' path.

    Ctrl-C stops training and saves what was trained so far.
    """
    try:
        cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    pick_device(cfg.device)
    check_destination(args, cfg)
    data_dir = args.data_dir or default_data_dir()
    try:
        train_x, _ = load_binarized(cfg.dataset, "train", data_dir, cfg.threshold)
        test_x, _ = load_binarized(cfg.dataset, "test", data_dir, cfg.threshold)
    except DatasetError as e:
        raise SystemExit(f"error: {e}") from None
    model = build_model(cfg)
    bars: dict[str, tqdm] = {}
    try:
        for ev in train(model, train_x, test_x, cfg):
            bar = bars.get(ev.stage)
            if bar is None:
                bar = bars[ev.stage] = tqdm(total=ev.total_steps, desc=ev.stage, unit="step", dynamic_ncols=True)
            bar.update(ev.step - bar.n)
            bar.set_postfix({k: f"{v:.3g}" for k, v in ev.losses.items()}, refresh=False)
            if ev.message:
                tqdm.write(ev.message)
    except KeyboardInterrupt:
        tqdm.write("interrupted: saving what was trained so far")
    except DivergenceError as e:
        raise SystemExit(f"error: training diverged: {e}; try a smaller learning rate or step size") from None
    finally:
        for bar in bars.values():
            bar.close()
    path = save_trained(model, cfg, args)
    print(f"saved {path}")
    return path


SAMPLE_FLAG_NAMES = {"num_steps": ("--steps",), "num_chains": ("--num-images", "--chains")}
"""SampleSettings fields whose flags are not --field-name; every field gets a flag: a new setting needs no edit here."""


def add_sample_arguments(p: argparse.ArgumentParser) -> None:
    """`sample`'s flags: one per SampleSettings field and per sampler parameter, plus the files to read and write."""
    p.add_argument("--weights", type=Path, default=SHIPPED_WEIGHTS)
    for f in fields(SampleSettings):
        if f.name == "step_size":  # its default is the chosen sampler's own ε
            p.add_argument("--step-size", type=argparse_type(spec(SampleSettings, f.name), f.name), default=None,
                           help="ε, the sampler's step size (default: the sampler's own, "
                                + ", ".join(f"{name} {info.step_size:g}" for name, info in SAMPLERS.items()) + ")")
        elif f.name != "sampler_params":
            setting_flag(p, SampleSettings, f.name, *SAMPLE_FLAG_NAMES.get(f.name, ()))
    for name, (default, param) in all_param_specs().items():  # e.g. --leapfrog-steps, HMC's L
        owners = ", ".join(s for s in SAMPLERS if name in param_specs(s))
        p.add_argument("--" + name.replace("_", "-"), type=argparse_type(param, name), default=None,
                       help=f"{param.help} ({owners} only; default {default})")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--data-dir", type=Path, default=None, help="needed for --start data")
    p.add_argument("--out-dir", type=Path, default=Path("samples"), help="where grid.png and chains.gif go")
    p.add_argument("--out", type=Path, default=None, help="also write the decoded images as an (N, 28, 28) .npy")
    p.add_argument("--gif-chains", type=argparse_type(Spec("int", low=1), "gif-chains"), default=64,
                   help="how many chains the GIF shows")
    p.add_argument("--digit", default="", help="draw only these digits, e.g. 7 or 3,8 (any of them)")
    p.add_argument("--exclude", default="", help="never draw these digits, e.g. 1,7")
    setting_flag(p, ClassSettings, "class_weight")
    p.add_argument("--latent-classifier", type=Path, default=None,
                   help="p(digit | code) for --digit/--exclude (default: beside --weights, *.classes.safetensors)")


def trained_on(meta: dict) -> str:
    """The dataset a weights file's metadata names; files from before the field existed hold MNIST models."""
    return meta.get("dataset", "mnist")


def threshold_of(meta: dict) -> float:
    """The binarization threshold a weights file's metadata names; before the field existed, 0.5."""
    return meta.get("threshold", DEFAULT_THRESHOLD)


def data_for(meta: dict, split: str, data_dir: Path | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The binarized split of the dataset a model was trained on (its metadata says which); exits on a data error."""
    try:
        return load_binarized(trained_on(meta), split, data_dir or default_data_dir(), threshold_of(meta))
    except DatasetError as e:
        raise SystemExit(f"error: {e}") from None


def fit_latent_classifier(model, meta: dict, data_dir: Path | None, seed: int = 0):
    """A latent classifier for `model`, trained on its training data's codes; returns it and its extra metadata."""
    train_x, train_y = data_for(meta, "train", data_dir)
    test_x, test_y = data_for(meta, "test", data_dir)
    classifier = train_latent_classifier(model, train_x, train_y, seed=seed)
    return classifier, {"dataset": trained_on(meta), "seed": seed,
                        "test_accuracy": round(latent_accuracy(classifier, model, test_x, test_y), 4)}


def latent_classifier_for(model, meta: dict, args: argparse.Namespace):
    """The latent classifier at --latent-classifier (or beside --weights); trained on the fly, with a note,
    when there is none."""
    path = args.latent_classifier or latent_classifier_path(args.weights)
    if path.exists():
        try:
            return load_latent_classifier(path, model)[0]
        except WeightsError as e:
            raise SystemExit(f"error: {e}") from None
    print(f"note: no latent classifier at {path}, so one is trained now (seconds); to keep one, run "
          f"`python -m ebm train-latent-classifier --weights {args.weights} --out {path}`", file=sys.stderr)
    return fit_latent_classifier(model, meta, args.data_dir)[0]


def run_sample(args: argparse.Namespace) -> dict:
    """`sample`: run the chains, write grid.png, chains.gif (and --out's .npy); print the settings and acceptance."""
    given = {name: getattr(args, name) for name in all_param_specs() if getattr(args, name) is not None}
    foreign = [name for name in given if name not in param_specs(args.sampler)]
    if foreign:
        raise SystemExit(f"error: --{foreign[0].replace('_', '-')} is not a parameter of --sampler {args.sampler}")
    try:
        step_size = SAMPLERS[args.sampler].step_size if args.step_size is None else args.step_size
        chosen = {f.name: getattr(args, f.name) for f in fields(SampleSettings) if f.name in vars(args)}
        settings = SampleSettings(**{**chosen, "step_size": step_size, "sampler_params": given})
        classes = ClassSettings(args.digit, args.exclude, args.class_weight)
        model, meta = load_model(args.weights)
    except (ValueError, WeightsError) as e:
        raise SystemExit(f"error: {e}") from None
    pick_device(args.device)
    if classes.conditional:
        result, step_size = sample_classes(model, latent_classifier_for(model, meta, args), classes, settings)
    else:
        data_codes = model.encode(data_for(meta, "train", args.data_dir)[0]) if settings.start == "data" else None
        with tqdm(total=settings.num_steps, desc="sampling", unit="step", dynamic_ncols=True) as bar:
            def advance(step: int) -> None:
                bar.update(step - bar.n)

            result = sample_chains(model, settings, data_codes, callback=advance)
    final = decode_binary(model, result.state.position)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    shown = min(args.gif_chains, settings.num_chains)
    grid_path = args.out_dir / "grid.png"
    grid_path.write_bytes(png_bytes(image_grid(final[:max(shown, min(len(final), 100))], scale=2)))
    gif_path = args.out_dir / "chains.gif"
    gif_path.write_bytes(gif_bytes(chain_frames(model, result.trajectory[:, :shown])))
    written = {"grid": str(grid_path), "gif": str(gif_path)}
    if args.out is not None:
        np.save(args.out, final.reshape(-1, 28, 28).numpy().astype(np.float32))
        written["npy"] = str(args.out)
    report = {"settings": settings.as_dict(), "mean_acceptance": round(result.acceptance.mean().item(), 4),
              "written": written}
    if classes.conditional:
        classifier, _ = load_classifier_or_exit(classifier_path(trained_on(meta)))
        report["classes"] = {"digits": list(classes.digits), "exclude": list(classes.exclude),
                             "class_weight": classes.class_weight, "step_size_used": round(step_size, 4),
                             **class_shares(classifier, final, classes.allowed)}
    print(json.dumps(report))
    return written


def load_classifier_or_exit(path: Path):
    """`load_classifier(path)`, exiting with one sentence when the file cannot be used."""
    try:
        return load_classifier(path)
    except WeightsError as e:
        raise SystemExit(f"error: {e}") from None


def add_train_latent_classifier_arguments(p: argparse.ArgumentParser) -> None:
    """`train-latent-classifier`'s flags: the model, the data, the seed and where the file goes."""
    p.add_argument("--weights", type=Path, default=SHIPPED_WEIGHTS, help="the model whose codes it classifies")
    p.add_argument("--data-dir", type=Path, default=None, help="dataset root (default $EBM_DATA_DIR or data/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="file to write (default: beside --weights)")


def run_train_latent_classifier(args: argparse.Namespace) -> Path:
    """`train-latent-classifier`: fit p(digit | code) for --weights on its training data, save it beside them."""
    try:
        model, meta = load_model(args.weights)
        out = check_weights_path(args.out or latent_classifier_path(args.weights))
    except (ValueError, WeightsError) as e:
        raise SystemExit(f"error: {e}") from None
    classifier, extra = fit_latent_classifier(model, meta, args.data_dir, args.seed)
    path = save_latent_classifier(classifier, model, out, extra)
    print(f"test accuracy on codes {extra['test_accuracy']:.4f}; saved {path}")
    return path


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    """`evaluate`'s flags: the weights to score, the sampler, how many samples, threads, and where the report goes."""
    p.add_argument("--weights", type=Path, default=SHIPPED_WEIGHTS, help="model weights to evaluate")
    p.add_argument("--classifier", type=Path, default=None,
                   help="classifier weights for the image metrics (default: the shipped one for the model's "
                        "dataset, weights/classifier_<dataset>.safetensors)")
    p.add_argument("--samples", type=int, default=10_000, help="images per model (and chains for the EBM)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sampler", choices=tuple(SAMPLERS), default=SampleSettings().sampler,
                   help="the sampler whose samples are scored, at its own default ε and parameters")
    p.add_argument("--data-dir", type=Path, default=None, help="dataset root (default $EBM_DATA_DIR or data/)")
    p.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR, help="where evaluation.json and evaluation.md go")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: the work is many small tensor ops, and on a shared "
                        "machine extra threads mostly wait for each other: measured 3-8x slower with 2)")


def run_evaluate(args: argparse.Namespace) -> dict:
    """Evaluate, print the Markdown report, write it with the JSON results into --out-dir."""
    if args.threads < 1:
        raise SystemExit(f"error: --threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    try:
        model, meta = load_model(args.weights)
        dataset = trained_on(meta)
        args.classifier = args.classifier or classifier_path(dataset)
        classifier, classifier_meta = load_classifier(args.classifier)
        if classifier_meta.get("dataset", dataset) != dataset:
            raise ValueError(f"the classifier {args.classifier.name} reads {classifier_meta['dataset']} images, "
                             f"but the model was trained on {dataset}")
        settings = SampleSettings(args.sampler, SAMPLERS[args.sampler].step_size, num_chains=args.samples,
                                  seed=args.seed)
        results = evaluate(model, classifier, args.data_dir, args.samples, args.seed, settings,
                           log=lambda message: print(message, flush=True), dataset=dataset)
    except (WeightsError, DatasetError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    results["settings"]["threads"] = args.threads
    results["settings"]["weights"] = str(args.weights)
    results["settings"]["classifier"] = str(args.classifier)
    results["settings"]["classifier_test_accuracy"] = classifier_meta.get("test_accuracy")
    report = report_markdown(results)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "evaluation.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out_dir / "evaluation.md").write_text(report)
    print(report)
    print(f"wrote {args.out_dir / 'evaluation.json'} and {args.out_dir / 'evaluation.md'}")
    return results


def add_score_arguments(p: argparse.ArgumentParser) -> None:
    """`score`'s flags: the picture, the model, where MNIST is, and where the preprocessed digit goes."""
    p.add_argument("image", type=Path, help="a picture of one digit (PNG, JPEG, ...; any size, any colours)")
    p.add_argument("--weights", type=Path, default=SHIPPED_WEIGHTS, help="model weights to score with")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="dataset root with MNIST, for log Z and the test digits compared with (default $EBM_DATA_DIR "
                        "or data/)")
    p.add_argument("--out", type=Path, default=None, help="also write the preprocessed 28×28 digit as this PNG")


def read_digit(path: Path, weights: Path):
    """The model at `weights`, its metadata and the picture at `path` as its (784,) binary input; or exit saying why."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SystemExit(f"error: cannot read the image {path}: {e.strerror or type(e).__name__}") from None
    try:
        model, meta = load_model(weights)
        return model.eval(), meta, preprocess_bytes(data, threshold_of(meta))
    except ImageError as e:
        raise SystemExit(f"error: {path}: {e}") from None
    except WeightsError as e:
        raise SystemExit(f"error: {e}") from None


def run_score(args: argparse.Namespace) -> dict:
    """`score`: preprocess the picture, score it among MNIST test digits (`ebm.scoring`), print JSON."""
    model, meta, image = read_digit(args.image, args.weights)
    try:
        test_x, _ = load_binarized(trained_on(meta), "test", args.data_dir or default_data_dir(), threshold_of(meta))
    except DatasetError as e:
        raise SystemExit(f"error: {e}") from None
    reference = build_reference(model, test_x, prior_log_z(model, model.encode(test_x)))
    result = {"image": str(args.image), **score_image(model, image, reference).to_dict(),
              "reference": {"num_images": len(reference.log_p_x), "log_z": reference.log_z,
                            "outlier_log_p_x": reference.outlier_log_p_x, "seconds": round(reference.seconds, 2)}}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_bytes(png_bytes(image.reshape(28, 28).numpy().astype(np.uint8) * 255))
        result["written"] = str(args.out)
    print(json.dumps(result, indent=2))
    return result


def add_inpaint_arguments(p: argparse.ArgumentParser) -> None:
    """`inpaint`'s flags: the picture, which half to hide, the model, chains, seed, and where the pictures go."""
    p.add_argument("image", type=Path, help="a picture of one digit (PNG, JPEG, ...; any size, any colours)")
    p.add_argument("--mask", choices=HIDDEN_HALVES, default="bottom", help="the half to hide and sample")
    p.add_argument("--weights", type=Path, default=SHIPPED_WEIGHTS, help="model weights to inpaint with")
    p.add_argument("--num-chains", type=argparse_type(spec(SampleSettings, "num_chains"), "num-chains"),
                   default=INPAINTING.num_chains, help="completions to draw")
    p.add_argument("--seed", type=argparse_type(spec(SampleSettings, "seed"), "seed"), default=0)
    p.add_argument("--out-dir", type=Path, default=Path("inpainted"),
                   help="where masked.png, completions.png and chains.gif go")


def run_inpaint(args: argparse.Namespace) -> dict:
    """`inpaint`: hide half of the picture, sample it from p(z | visible pixels) (`ebm.energies.inpaint`), write the
    completions and print what the image classifier reads in each, as JSON."""
    model, meta, image = read_digit(args.image, args.weights)
    settings = SampleSettings(**{**INPAINTING.as_dict(), "num_chains": args.num_chains})
    view = inpaint_view(model, image, args.mask, args.seed, settings)
    classifier, _ = load_classifier_or_exit(classifier_path(trained_on(meta)))
    read = classifier.predict(view.completions)[1].argmax(-1).tolist()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    written = {name: str(args.out_dir / name) for name in ("masked.png", "completions.png", "chains.gif")}
    for name, data in zip(written, (view.masked_png, view.png, view.gif)):
        (args.out_dir / name).write_bytes(data)
    result = {"image": str(args.image), "hidden": args.mask, "num_chains": view.num_chains,
              "num_steps": view.num_steps, "step_size": view.step_size, "mean_acceptance": view.mean_acceptance,
              "seed": args.seed, "digits_read": read, "written": written}
    print(json.dumps(result, indent=2))
    return result


def build_parser() -> argparse.ArgumentParser:
    """The `python -m ebm` parser: one subcommand each for train, sample, evaluate, score and train-classifier."""
    parser = argparse.ArgumentParser(prog="python -m ebm",
                                     description="Energy-based model of MNIST in a 4-D latent space")
    parser.add_argument("--version", action="version", version=__version__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_arguments(sub.add_parser("train", help="train the autoencoder and the energy net"))
    add_sample_arguments(sub.add_parser("sample", help="draw digits by Langevin dynamics"))
    add_evaluate_arguments(sub.add_parser("evaluate", help="likelihoods, sample quality and baselines"))
    add_score_arguments(sub.add_parser("score", help="how likely one picture of a digit is under the model"))
    add_inpaint_arguments(sub.add_parser("inpaint", help="hide half of a digit's picture and sample what is missing"))
    add_train_classifier_arguments(sub.add_parser("train-classifier",
                                                  help="retrain the MNIST classifier used by the metrics"))
    add_train_latent_classifier_arguments(sub.add_parser("train-latent-classifier",
                                                         help="train p(digit | code) for sample --digit"))
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of `python -m ebm`: parse `argv` (default sys.argv), limit native threads, run the command."""
    args = build_parser().parse_args(argv)
    limit_native_threads()  # one torch thread ($EBM_TORCH_THREADS), chains split over the cores: ebm.threads
    if args.command == "train":
        run_train(args)
    elif args.command == "sample":
        run_sample(args)
    elif args.command == "evaluate":
        run_evaluate(args)
    elif args.command == "score":
        run_score(args)
    elif args.command == "inpaint":
        run_inpaint(args)
    elif args.command == "train-classifier":
        run_train_classifier(args)
    elif args.command == "train-latent-classifier":
        run_train_latent_classifier(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
