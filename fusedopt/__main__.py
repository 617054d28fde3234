import sys

from fusedopt.cli import run

sys.exit(run())
