"""MLproject entry point `ablation`: the same command as `medvlm ablation`."""

import sys

from medvlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["ablation", *sys.argv[1:]]))
