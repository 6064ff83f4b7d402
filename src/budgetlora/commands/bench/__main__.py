"""`python -m budgetlora.commands.bench _worker SPEC.json`: one pipeline in a process of its own
(internal; use `budgetlora bench`)."""

import sys

from budgetlora.commands.bench.worker import run_worker

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "_worker":
        sys.exit(run_worker(sys.argv[2]))
    print("usage: python -m budgetlora.commands.bench _worker SPEC.json  (internal; use `budgetlora bench`)", file=sys.stderr)
    sys.exit(2)
