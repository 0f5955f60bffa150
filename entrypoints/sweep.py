"""MLproject entry point `sweep`: the same command as `medvlm sweep`."""

import sys

from medvlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
