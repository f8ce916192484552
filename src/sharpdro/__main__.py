import os

if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 and int(os.environ.get("RANK", "0") or 0) > 0:
    # torchrun: only rank 0 talks; the other ranks keep stderr for their errors.
    import sys
    import warnings

    warnings.simplefilter("ignore")
    sys.stdout = open(os.devnull, "w")

from sharpdro.cli import main  # noqa: E402

raise SystemExit(main())
