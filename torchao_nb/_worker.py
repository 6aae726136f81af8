"""Entry point of a worker process: `python -m torchao_nb._worker FD` (started by executors.Worker)."""

import sys

from torchao_nb.executors import serve

if __name__ == "__main__":
    serve(int(sys.argv[1]))
