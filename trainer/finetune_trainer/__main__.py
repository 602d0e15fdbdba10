"""``python -m finetune_trainer`` = ``finetune-train``; also the script path for
``python -m paddle.distributed.launch`` (which takes a file, not a module)::

    python -m paddle.distributed.launch --devices 0,1 \
        <site-packages>/finetune_trainer/__main__.py --settings job.yaml
"""

import os
import sys

# Run as a file, Python puts this package's folder first on sys.path, where our module names
# (data, model, train, ...) could shadow other packages' modules: take it off.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

from finetune_trainer.cli import main  # noqa: E402 - after the sys.path fix

if __name__ == "__main__":
    sys.exit(main())
