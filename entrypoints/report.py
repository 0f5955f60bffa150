"""MLproject entry point `report`: the same command as `medvlm report`."""

import sys

from medvlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
