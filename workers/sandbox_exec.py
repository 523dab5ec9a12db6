"""Started as `python -I -S workers/sandbox_exec.py POLICY -- ARGV...` by a work horse: put
this process in the job's sandbox (`workers.sandbox`), then exec the job in its place."""

import os
import sys

if __name__ == "__main__":
    # Isolated mode without site: only the standard library and this project's folder.
    sys.path[:1] = [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
    from workers.sandbox import exec_main

    exec_main(sys.argv[1:])
