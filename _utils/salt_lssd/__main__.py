"""``python -m salt_lssd <role> <run_dir>``: the entry point of every detached process.

``python -m salt_lssd file_roots``: the directory holding the ``lssd`` SLS tree, to add to the
master's file_roots after ``pip install salt-lssd``.
"""

import sys
import traceback

from salt_lssd import LssdError
from salt_lssd.procs import Reporter


def main(argv):
    if argv[1:] == ["file_roots"]:
        from salt_lssd import loader

        print(loader.file_roots())
        return 0
    if len(argv) != 3 or argv[1] not in ("tracker", "seeder", "peer"):
        sys.stderr.write("usage: python -m salt_lssd {tracker|seeder|peer} RUN_DIR | file_roots\n")
        return 2
    role, run_dir = argv[1], argv[2]
    reporter = Reporter(run_dir)
    try:
        if role == "tracker":
            from salt_lssd import tracker

            tracker.run(reporter)
        else:
            from salt_lssd import swarm

            swarm.run(role, reporter)
    except LssdError as exc:  # an expected refusal (port in use...): its message says it all
        reporter.report(status="failed", error=str(exc))
        return 1
    except Exception as exc:  # report why, for the Salt job waiting on us
        traceback.print_exc()
        reporter.report(status="failed", error=str(exc) or type(exc).__name__)
        return 1
    if reporter.status not in ("failed", "done"):
        reporter.report(status="stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
