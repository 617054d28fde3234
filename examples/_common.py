"""What every example shares: its command line and where its figure goes."""

from __future__ import annotations

import argparse
import os


def start(doc: str, argv, *options):
    """Parse ``--out`` (default docs/images) and the example's own ``options``; return
    (args, pyplot) with the non-interactive Agg backend."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--out", default="docs/images", help="folder for the PNG")
    for flags, kwargs in options:
        parser.add_argument(flags, **kwargs)
    args = parser.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return args, plt


def save(fig, plt, out_dir: str, name: str) -> str:
    """Write ``fig`` as ``out_dir/name``, print and return the path."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    print(path)
    return path
