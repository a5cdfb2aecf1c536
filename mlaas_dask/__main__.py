import sys

from mlaas_dask.cli import main

sys.exit(main())
