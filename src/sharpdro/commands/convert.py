"""sharpdro convert SRC OUT [--to torch|mindspore|mindspore-ckpt]: checkpoints between backends."""
from sharpdro.backends.mindspore.convert import add_parser, run  # noqa: F401  (imports no framework)
