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

from sharpdro.backends.torch.bench import BenchSettings, format_table, run_bench

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
    print(markdown(r))
    return 0


def markdown(r: dict) -> str:
    ratios = r.get("ratios", {})
    lines = [f"{r['model']}, {r['image_size']} px, batch {r['batch_size']}, {r['precision']}, {r['device_name']} "
             f"({r['threads']} threads, torch {r['torch']}), median of {r['steps']} interleaved steps", "",
             "| algorithm | step (s) | images/s | x ERM | peak MB (step adds) | host syncs/step |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for label, v in r["results"].items():
        lines.append(f"| `{label}` | {v['step_seconds_median']:.4f} | {v['images_per_second']:.1f} | "
                     f"{ratios.get(label, float('nan')):.3f} | {v['peak_memory_mb']:.0f} "
                     f"({v['peak_memory_step_mb']:.0f}) | {v['host_syncs_per_step']} |")
    if "pipeline" in r:
        q = r["pipeline"]
        lines += ["", f"input pipeline: {q['step_seconds_pipeline']:.4f} s vs {q['step_seconds_in_memory']:.4f} s "
                      f"in memory ({100 * q['overhead']:+.1f}%); the batch alone "
                      f"{1000 * q['batch_seconds_median']:.2f} ms = {100 * q['batch_fraction_of_step']:.2f}% of a step"]
    if "eval_images_per_second" in r:
        lines.append(f"evaluation: {r['eval_images_per_second']:.0f} images/s")
    if "corruption" in r:
        c = r["corruption"]
        lines += ["", f"corruption of {c['images']} images ({c['source']}), severities {c['severities']}:", "",
                  "| corruption | images/s, 1 worker | images/s, all cores | speedup | cores used |",
                  "| --- | ---: | ---: | ---: | ---: |"]
        for name, v in c.items():
            if isinstance(v, dict):
                lines.append(f"| {name} | {v['images_per_second_workers_1']:.0f} | "
                             f"{v['images_per_second_workers_all']:.0f} | {v['speedup']:.2f} | "
                             f"{v['cores_used_workers_all']:.2f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
