"""``sharpdro sweep``: run a grid of configs, one resumable job folder each."""
from __future__ import annotations

import sys


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a grid of configs (local, parallel or Slurm); finished jobs are skipped, unfinished resumed",
        description="Run every job of a sweep in OUT/<job hash>/. A sweep is a YAML file (base, set, grid, "
                    "include) and/or --base/--set/--grid flags. Finished jobs (OUT/<hash>/done) are skipped, "
                    "unfinished ones resume from their last checkpoint, a failing job leaves "
                    "OUT/<hash>/error.txt and the sweep goes on; the exit status is 1 when a job failed.",
    )
    p.add_argument("sweep", nargs="?", metavar="SWEEP.yaml",
                   help="sweep file (or the name of a shipped one, e.g. example); optional with --base/--grid")
    p.add_argument("--out", required=True, metavar="DIR", help="sweep folder: one subfolder per job, sweep.json")
    p.add_argument("--base", metavar="CONFIG", default=None,
                   help="base config path or shipped name (replaces the sweep file's base)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override for every job (repeatable; applied after the file's set, before the grid)")
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="grid axis (repeatable; replaces the file's axis of the same key), e.g. seed=0,1,2")
    p.add_argument("--launcher", choices=("local", "parallel", "slurm"), default="local",
                   help="local (default): one job after the other in this process; parallel: --workers "
                        "processes; slurm: one Slurm job per sweep job through submitit")
    p.add_argument("--workers", type=int, default=2, help="parallel launcher: worker processes (default 2; "
                   "train.threads, when null, becomes cores // workers)")
    p.add_argument("--dry-run", action="store_true",
                   help="list the jobs (hash, status, overrides) and exit; with a tune block, the final-seed and "
                        "variant jobs of a method whose trials are not all done are listed as pending after selection")
    p.add_argument("--only", action="append", default=[], metavar="HASH",
                   help="run (or list) only these jobs of the sweep: a job hash or a unique prefix of 4+ "
                        "characters, repeatable or comma-separated; the other jobs are left as they are")
    p.add_argument("--no-progress", action="store_true", help="no progress bar over jobs")
    p.add_argument("--resubmit", action="store_true",
                   help="run again jobs that an earlier slurm launch submitted and that have not finished")
    g = p.add_argument_group("slurm launcher (needs: pip install 'sharpdro[slurm]')")
    g.add_argument("--slurm-partition", default=None)
    g.add_argument("--slurm-time", default="4:00:00",
                   help="time limit per job: minutes, HH:MM:SS, D-HH:MM:SS or 90m/4h/2d (default 4:00:00)")
    g.add_argument("--slurm-gpus", type=int, default=1,
                   help="GPUs per job (default 1); N > 1 starts N tasks that train one data-parallel (DDP) run, "
                        "ranks taken from Slurm's variables")
    g.add_argument("--slurm-cpus", type=int, default=None, help="CPUs per job (also train.threads when null)")
    g.add_argument("--slurm-mem", type=float, default=None, metavar="GB", help="memory per job in GB")
    g.add_argument("--slurm-account", default=None)
    g.add_argument("--slurm-qos", default=None)
    g.add_argument("--slurm-constraint", default=None)
    g.add_argument("--slurm-exclude", default=None, metavar="NODES")
    g.add_argument("--slurm-array-parallelism", type=int, default=None, metavar="N",
                   help="at most N jobs of the array running at once")
    g.add_argument("--slurm-extra", action="append", default=[], metavar="OPTION[=VALUE]",
                   help="raw #SBATCH option (repeatable), e.g. mail-type=END")
    g.add_argument("--slurm-cluster", default="slurm", choices=("slurm", "local", "debug"),
                   help="submitit cluster (default slurm); local/debug run the jobs on this machine, to test a sweep")
    g.add_argument("--slurm-wait", action="store_true",
                   help="wait for the Slurm jobs and report their outcome (default: submit and return)")
    p.set_defaults(func=run)


def _final_plan(spec, out, jobs):
    """(final-seed jobs that can run now, dry-run lines for those waiting for their method's trials)."""
    if not spec.tune or not spec.tune.get("final_seeds"):
        return [], []
    from sharpdro.experiments.tuning_final import final_plan

    return final_plan(spec, out, jobs)


def _final_jobs(spec, out, jobs):
    return _final_plan(spec, out, jobs)[0]


def run(args) -> int:
    from sharpdro.experiments import sweep as sw

    if args.sweep is None and args.base is None and not args.grid and not args.overrides:
        raise sw.SweepError("give a sweep file, or build one with --base/--set/--grid")
    spec = sw.build_spec(args.sweep, base=args.base, sets=args.overrides, grids=args.grid)
    jobs = all_jobs = sw.expand(spec)
    finals, pending = _final_plan(spec, args.out, jobs)
    chosen, all_finals = None, finals
    if args.only:  # checked against every job this launch knows, trials and final seeds alike
        chosen = {j.hash for j in sw.select_jobs(jobs + finals, args.only)}
        jobs, finals, pending = [j for j in jobs if j.hash in chosen], [j for j in finals if j.hash in chosen], []
    if args.dry_run:
        for line in sw.describe_jobs(jobs + finals, args.out) + pending:
            print(line)
        return 0
    slurm = None
    if args.launcher == "slurm":
        slurm = sw.slurm_parameters(
            partition=args.slurm_partition, time=args.slurm_time, gpus=args.slurm_gpus, cpus=args.slurm_cpus,
            mem_gb=args.slurm_mem, account=args.slurm_account, qos=args.slurm_qos,
            constraint=args.slurm_constraint, exclude=args.slurm_exclude,
            array_parallelism=args.slurm_array_parallelism, extra=args.slurm_extra)
    launch = {"launcher": args.launcher, "workers": args.workers, "spec": spec, "slurm": slurm,
              "slurm_cluster": args.slurm_cluster, "slurm_wait": args.slurm_wait, "resubmit": args.resubmit,
              "progress": not args.no_progress}
    # Slurm without waiting returns before the trials end: submit now the final-seed jobs of the methods whose
    # trials an earlier launch finished (a later launch, once the rest are done, submits theirs)
    first = jobs + finals if args.launcher == "slurm" else jobs
    if chosen is not None:  # the index still lists the whole sweep, so a report shows the rest as not started
        sw.write_index(args.out, all_jobs + all_finals, spec)
    outcome = sw.run_sweep(first, args.out, **launch)
    if spec.tune and spec.tune.get("final_seeds") and (args.launcher != "slurm" or args.slurm_wait):
        # the trials are done (as far as they go): the selected trial of each finished method on its final seeds
        known = {j.hash for j in first}
        finals = [j for j in _final_jobs(spec, args.out, all_jobs) if j.hash not in known
                  and (chosen is None or j.hash in chosen)]
        if finals:
            more = sw.run_sweep(finals, args.out, **launch)
            for key in ("total", "done", "failed", "skipped", "busy", "submitted", "waiting"):
                setattr(outcome, key, getattr(outcome, key) + getattr(more, key))
            outcome.failures += more.failures
            outcome.slurm_ids.update(more.slurm_ids)
    print(f"sweep {args.out}: {outcome.line()}")
    for h, err in outcome.failures:
        print(f"  failed {h}: {err}  (see {args.out}/{h}/error.txt)", file=sys.stderr)
    return 0 if outcome.ok else 1
