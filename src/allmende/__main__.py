"""`allmende …` and `python -m allmende …`: a node command starts with the garbage collector
paused until the node has loaded everything (allmende.node.heap: a fifth of a provider's
start-up CPU went to collector passes over the growing heap)."""

import sys

from allmende.node.heap import pause_for_startup


def run() -> None:
    pause_for_startup(sys.argv[1:])
    from allmende.cli import main  # imported with the collector already paused

    main()


if __name__ == "__main__":
    run()
