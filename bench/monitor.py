#!/usr/bin/env python3
"""Interference monitor for bench/run.sh (the machine may be shared with builds and tests).

  monitor.py OUT_JSONL ROOT_PID POSTMASTER_PID

Every 0.5 s, lists runnable (state R) processes that belong neither to the benchmark (descendants
of ROOT_PID) nor to its cluster (POSTMASTER_PID and its children), and appends
{"t": epoch, "foreign": [names]} to OUT_JSONL. Exits when ROOT_PID does. report.py summarizes
the samples that fall inside each scenario's measured window.
"""
import json
import os
import sys
import time


def snapshot():
    procs = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may contain spaces and parentheses
        rp = s.rfind(")")
        comm = s[s.find("(") + 1:rp]
        rest = s[rp + 2:].split()
        procs[int(d)] = (comm, rest[0], int(rest[1]), bool(cmd))
    return procs


def main():
    out, root, postmaster = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    me = os.getpid()
    with open(out, "a") as f:
        while os.path.exists(f"/proc/{root}"):
            procs = snapshot()
            children = {}
            for pid, (_, _, ppid, _) in procs.items():
                children.setdefault(ppid, []).append(pid)
            mine, stack = set(), [root, postmaster, me]
            while stack:
                p = stack.pop()
                if p in mine:
                    continue
                mine.add(p)
                stack.extend(children.get(p, []))
            foreign = sorted(comm for pid, (comm, state, _, user) in procs.items()
                             if state == "R" and user and pid not in mine)
            f.write(json.dumps({"t": round(time.time(), 2), "foreign": foreign}) + "\n")
            f.flush()
            time.sleep(0.5)


if __name__ == "__main__":
    main()
