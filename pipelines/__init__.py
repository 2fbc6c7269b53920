"""The DVC stages, one module each, run as ``python -m pipelines.<stage>``."""

import sys

from transferops.runtime import pause_garbage_collector

# While Python locates the module that `-m` names, sys.argv[0] is "-m": this process
# was started as a stage. run_stage (transferops/commands.py) ends the pause once the
# stage's libraries are imported.
if sys.argv[:1] == ["-m"]:
    pause_garbage_collector()
