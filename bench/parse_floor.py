"""The parse floor: load every catalog file with the fastest PyYAML loader, and nothing else.

    python bench/parse_floor.py CATALOG_DIR

Run as its own fresh process, like the ``reconcile`` command it is compared with: the
process's wall time is the floor for ``validate`` and ``plan``. Only ``yaml`` is imported.
Each document is dropped once its images are counted: holding all of them would make
Python's garbage collector walk them again and again, which is a cost of holding data, not
of parsing it. The number of images is printed so the caller can check that the same
catalog was read.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def main() -> None:
    root = Path(sys.argv[1])
    files = sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))
    images = 0
    for path in files:
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=Loader)
        images += len(document.get("images") or ())
    print(f"parsed {images} images in {len(files)} files with {Loader.__name__}")


if __name__ == "__main__":
    main()
