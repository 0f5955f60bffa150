"""MLproject entry point `finetune`: the same command as `medvlm finetune`."""

import sys

from medvlm.cli import main

if __name__ == "__main__":
    sys.exit(main(["finetune", *sys.argv[1:]]))
