"""`python -m partita scheduler|worker ...`: the `partita` command, run by this package's
extension (so a LocalCluster started from Python needs no separate binary)."""

import sys

from ._partita import cli_main

if __name__ == "__main__":
    sys.exit(cli_main(["partita", *sys.argv[1:]]))
