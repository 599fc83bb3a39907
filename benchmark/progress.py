"""Progress bars: tqdm with ETA on rank 0; redrawn at most every 30 s when stderr is a log file, not a TTY."""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm import tqdm


def progress(iterable: Any = None, **kwargs: Any) -> tqdm:
    """`tqdm(iterable, **kwargs)`, silent on ranks other than 0 and sparse when logging to a file."""
    main = int(os.environ.get("RANK", "0")) == 0
    kwargs["disable"] = kwargs.get("disable", False) or not main
    kwargs.setdefault("mininterval", 0.1 if sys.stderr.isatty() else 30.0)
    return tqdm(iterable, dynamic_ncols=True, **kwargs)
