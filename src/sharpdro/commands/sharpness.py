"""sharpdro sharpness RUN_DIR [RUN_DIR ...] [--severities 0 1 2 3 4 5] [--rho 0.05] [--radii 0.01,0.02,0.05,0.1] ..."""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sharpness",
        help="measure how the loss grows around trained weights, per severity (worst case and random directions)",
        description="Per severity, on a fixed seeded subset of the test (or validation) images, with the model in "
                    "eval mode (BatchNorm running statistics) throughout: the loss at the trained weights w; the "
                    "worst-case increase max L(w+eps) - L(w) found by projected gradient ascent in the L2 ball "
                    "||eps|| <= rho over all parameters (--adaptive: ASAM's ||eps/|w||| <= rho); and the mean "
                    "(std) increase along --directions random filter-normalised directions (Li et al. 2018; zero "
                    "on BatchNorm parameters and biases) at each radius of --radii (relative to the filter norms). "
                    "Weights are restored exactly. Writes sharpness.json and sharpness.png/.svg. With several runs, "
                    "each run's sharpness.json goes to its run directory and one figure (a line per run, labelled "
                    "by algorithm) plus a combined sharpness.json to --out (default ./sharpness); the same --seed "
                    "gives every run the same images and the same random directions.")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (or checkpoint files)")
    p.add_argument("--severities", type=int, nargs="+", default=None, metavar="S",
                   help="severities to measure (default: every severity of the split); write the run directories "
                        "before this option")
    p.add_argument("--rho", type=float, default=0.05, help="radius of the worst-case ball (default 0.05)")
    p.add_argument("--adaptive", action="store_true",
                   help="ASAM's scale-invariant ball ||eps / |w| || <= rho instead of ||eps|| <= rho")
    p.add_argument("--ascent-steps", type=int, default=5,
                   help="projected gradient-ascent steps of the worst case (default 5; 0 skips it)")
    p.add_argument("--ascent-step-size", type=float, default=1.0,
                   help="ascent step length in units of rho (default 1: the first step is SAM's perturbation)")
    p.add_argument("--radii", default="0.01,0.02,0.05,0.1", metavar="R1,R2,...",
                   help="radii of the random directions, relative to the filter norms (default 0.01,0.02,0.05,0.1)")
    p.add_argument("--directions", type=int, default=10,
                   help="random filter-normalised directions per radius (default 10; 0 skips them)")
    p.add_argument("--max-images", type=int, default=1000,
                   help="images per severity: a fixed seeded subset of the split (default 1000)")
    p.add_argument("--split", choices=("test", "val"), default="test", help="images to measure on (default test)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image subset and the directions (default 0)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default: the run's eval.batch_size)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: the run's)")
    p.add_argument("--labels", default=None, metavar="A,B,...",
                   help="figure labels of the runs (default: the algorithm, made unique by the run name)")
    p.add_argument("--format", default="png,svg", metavar="png,svg", help="figure formats (default png,svg)")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="output folder (default: the run directory for one run, ./sharpness for several)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args) -> int:
    from sharpdro.experiments.sharpness import SharpnessError, SharpnessSettings, parse_radii, run_sharpness

    formats = [f.strip().lower() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("png", "svg", "pdf")]
    if bad or not formats:
        raise SharpnessError(f"--format: unknown image format(s) {', '.join(bad) or '(none)'}; use png, svg, pdf")
    labels = [x.strip() for x in args.labels.split(",")] if args.labels else None
    settings = SharpnessSettings(
        severities=args.severities, rho=args.rho, radii=parse_radii(args.radii), directions=args.directions,
        ascent_steps=args.ascent_steps, ascent_step_size=args.ascent_step_size, adaptive=args.adaptive,
        max_images=args.max_images, split=args.split, seed=args.seed, batch_size=args.batch_size,
        device=args.device).validate()
    run_sharpness(args.runs, settings, out=args.out, labels=labels, formats=formats, progress=not args.no_progress)
    return 0
