"""MLproject entry point `zeroshot`: the same command as `medvlm zeroshot`."""

import sys

from medvlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["zeroshot", *sys.argv[1:]]))
