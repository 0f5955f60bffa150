"""MLproject entry point `stability`: the same command as `medvlm stability`."""

import sys

from medvlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["stability", *sys.argv[1:]]))
