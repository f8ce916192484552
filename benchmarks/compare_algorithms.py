"""Every algorithm side by side in one run of ``sharpdro bench`` (interleaved steps, same model and batch).

    python benchmarks/compare_algorithms.py                        # CPU, cnn, 32 px, batch 128, fp32
    python benchmarks/compare_algorithms.py --device cuda --model wrn28_2 --precision bf16
    python benchmarks/compare_algorithms.py --only erm,sharpdro --steps 50

Writes the full JSON (``benchmarks/results/<device>-<model>-<precision>.json`` unless ``--out``) and
prints a Markdown table for ``benchmarks/README.md``: step time, images/s, the ratio to ERM,
peak memory and host syncs per step; then the input-pipeline overhead, evaluation and
(with ``--corruption``) corruption throughput.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from sharpdro.experiments.bench import BenchSettings, format_table, run_bench

DEFAULT = [
    "erm", "sam", "groupdro", "sharpdro", "jtt", "eiil",
    "sharpdro_agnostic",                                                   # second pass on the whole batch
    "sharpdro_agnostic:second_pass_selected_only=true:fraction=1.0",
    "sharpdro_agnostic:second_pass_selected_only=true:fraction=0.5",
    "sharpdro_agnostic:second_pass_selected_only=true:fraction=0.2",
]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="cnn")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--only", default="", help="comma-separated subset of the algorithm list")
    p.add_argument("--corruption", action="store_true", help="also time the corruptions")
    p.add_argument("--corruption-images", type=int, default=50000)
    p.add_argument("--corruption-source", default=None, help="npz with real uint8 images (key x)")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    algos = [x for x in a.only.split(",") if x] or DEFAULT
    s = BenchSettings(algorithm=algos[0], compare=algos[1:], model=a.model, batch_size=a.batch_size,
                      steps=a.steps, warmup=a.warmup, device=a.device, precision=a.precision,
                      image_size=a.image_size, channels_last=a.channels_last, threads=a.threads,
                      corruption=a.corruption, corruption_images=a.corruption_images,
                      corruption_source=a.corruption_source)
    r = run_bench(s)
    print(format_table(r))
    out = Path(a.out or Path(__file__).parent / "results" / f"{a.device.replace(':', '')}-{a.model}-{a.precision}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=1) + "\n")
    print(f"\nwrote {out}\n")
    print(format_table(r, markdown=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
