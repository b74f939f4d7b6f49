"""`python3 bench/replay ...`: the replay benchmark's command line (cli.py)."""
import os
import sys

# Running a folder puts the folder itself first on sys.path, where trace.py would shadow the
# standard library's `trace`: import the package by its name from the repository root instead.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[0] = REPO

from bench.replay.cli import main  # noqa: E402

sys.exit(main())
