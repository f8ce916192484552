"""sharpdro bench --algorithm NAME --model NAME --batch-size N --steps N --device D --precision P [--json]"""
from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench", help="measure training, evaluation, input-pipeline and corruption throughput and peak memory",
        description="Time training steps (median after warm-up), evaluation, the input pipeline against tensors "
                    "already on the device, the five corruptions, and peak memory, on seeded synthetic data. "
                    "--compare runs several algorithms interleaved in one process on the same model and batch. "
                    "With --json the last line of the output is one JSON object.")
    from sharpdro import methods

    p.add_argument("--algorithm", default=methods.FLAGSHIP,
                   help="algorithm (NAME or NAME:key=value:..., e.g. sharpdro_agnostic:fraction=0.2)")
    p.add_argument("--model", default="cnn", help="network: cnn, cnn7, resnet18, resnet50, wrn28_2, wrn28_10")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=20, help="timed steps (after the warm-up)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto (the default, as in training): bf16 where the device has fast bf16, else fp32; "
                        "the table's header says what it resolved to and the hardware line why")
    p.add_argument("--compare-precision", default="", metavar="P,Q,...",
                   help="time every algorithm once per precision (e.g. fp32,bf16), interleaved step by step in "
                        "one process, and print each algorithm's step-time ratio to the first precision")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--width", type=int, default=32, help="base width of the cnn and cnn7 models")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true", help="torch.compile the training forward")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--compare", default="", metavar="A,B,...",
                   help="also time these algorithms, interleaved step by step (ratios to erm when present)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="config override for every session, e.g. --set algorithm.rho=0.1")
    p.add_argument("--train-images", type=int, default=10000, help="synthetic training set of the pipeline")
    p.add_argument("--crop-padding", type=int, default=4, help="pipeline augmentation: crop padding (0: off)")
    p.add_argument("--no-flip", action="store_true", help="pipeline augmentation: no horizontal flip")
    p.add_argument("--eval-images", type=int, default=2048)
    p.add_argument("--eval-batch-size", type=int, default=256)
    p.add_argument("--corruption-images", type=int, default=2000)
    p.add_argument("--corruption-source", default=None, metavar="NPZ",
                   help="real uint8 [N,H,W,3] images (key x) for the corruption timing, tiled to "
                        "--corruption-images (default: synthetic)")
    p.add_argument("--skip", default="", metavar="PARTS",
                   help="comma-separated parts to skip: pipeline, eval, corruption")
    p.add_argument("--backend", default="torch", choices=("torch", "mindspore"),
                   help="mindspore: training-step timing only (the MindSpore CPU backend)")
    p.add_argument("--json", action="store_true", help="print the JSON object as the last line")
    p.set_defaults(func=run)


def _precisions(text: str) -> list[str]:
    from sharpdro.errors import SharpDROError

    out = [p.strip() for p in text.split(",") if p.strip()]
    bad = [p for p in out if p not in ("auto", "fp32", "bf16", "fp16")]
    if bad:
        raise SharpDROError(f"--compare-precision {', '.join(bad)}: allowed are auto, fp32, bf16, fp16 "
                            f"(e.g. --compare-precision fp32,bf16)")
    return out


def run(args) -> int:
    import json

    from sharpdro.errors import SharpDROError
    from sharpdro.experiments.bench import BenchSettings, format_table, run_bench

    skip = {x.strip() for x in args.skip.split(",") if x.strip()}
    bad = skip - {"pipeline", "eval", "corruption"}
    if bad:
        raise SharpDROError(f"--skip {', '.join(sorted(bad))}: allowed parts are pipeline, eval, corruption")
    for name in ("batch_size", "steps", "eval_batch_size"):
        if getattr(args, name) < 1:
            raise SharpDROError(f"--{name.replace('_', '-')} must be >= 1")
    if args.backend == "mindspore":  # the training step alone
        skip |= {"pipeline", "eval", "corruption"}
    settings = BenchSettings(
        algorithm=args.algorithm, model=args.model, batch_size=args.batch_size, steps=args.steps,
        warmup=max(0, args.warmup), device=args.device, precision=args.precision,
        compare_precision=_precisions(args.compare_precision), image_size=args.image_size,
        num_classes=args.num_classes, width=args.width, channels_last=args.channels_last, compile=args.compile,
        threads=args.threads, compare=[c for c in args.compare.split(",") if c.strip()],
        overrides=args.overrides, train_images=args.train_images, flip=not args.no_flip,
        crop_padding=args.crop_padding, eval_images=args.eval_images, eval_batch_size=args.eval_batch_size,
        corruption_images=args.corruption_images,
        corruption_source=args.corruption_source, pipeline="pipeline" not in skip, evaluation="eval" not in skip,
        corruption="corruption" not in skip, backend=args.backend)
    result = run_bench(settings)
    print(format_table(result))
    if args.json:
        print(json.dumps(result))
    return 0
