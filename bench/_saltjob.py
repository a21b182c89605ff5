"""``python bench/_saltjob.py MASTER_CONF_DIR TARGET FUNCTION ARGS_JSON TIMEOUT``: one Salt job.

Prints one JSON line per minion return as it reaches the master, with ``t`` (wall clock) so the
benchmark knows when each minion was done. Runs inside host 0's namespace (the local client
talks to the master's request port on the lab address). ARGS_JSON is a list of positional
arguments or ``{"arg": [...], "kwarg": {...}}``.
"""

import json
import sys
import time


def main(argv):
    conf_dir, tgt, fun, args, timeout = argv[1:6]
    import salt.client

    args = json.loads(args)
    if isinstance(args, dict):
        arg, kwarg = args.get("arg", []), args.get("kwarg") or None
    else:
        arg, kwarg = args, None
    client = salt.client.LocalClient(c_path=f"{conf_dir}/master")
    for ret in client.cmd_iter(tgt, fun, arg=arg, kwarg=kwarg, timeout=float(timeout)):
        now = time.time()
        for minion, data in ret.items():
            print(json.dumps({"minion": minion, "t": now, "ret": data.get("ret"),
                              "retcode": data.get("retcode")}, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
