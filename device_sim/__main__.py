"""``python -m device_sim``: the simulator without the main CLI (same options as ``carewatch sim``)."""

from __future__ import annotations

import argparse
import sys

from carewatch.settings import Settings
from device_sim.cli import add_arguments, main

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m device_sim", description=__doc__)
    add_arguments(parser)
    sys.exit(main(parser.parse_args(), Settings()))
