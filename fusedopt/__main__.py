import sys

from fusedopt.cli import main

sys.exit(main())
