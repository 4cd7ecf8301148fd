"""``python -m retrieval_heads.train ARGS`` = ``retrieval-heads train ARGS`` (for torchrun:
``torchrun --nproc_per_node 2 -m retrieval_heads.train --preset tiny --out runs/x``)."""

import sys

from ..cli import main

if __name__ == "__main__":
    main(["train", *sys.argv[1:]])
