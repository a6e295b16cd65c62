"""Per-stage wall-clock times of `make test`, kept in a TSV and printed as one table at the end.

  timing.py run NAME -- CMD...     run CMD, record NAME with its start, duration and exit status
  timing.py molecule SCENARIO      run `molecule test -s SCENARIO`, record each of its actions under the
                                   stage "molecule SCENARIO" (run it inside `timing.py run "molecule SCENARIO"`)
  timing.py table                  print the table (every stage so far, in start order), then, for each
                                   failed stage, the last error lines of its output; exit status 1 when
                                   a stage failed

The file is $GPULAB_TIMINGS (default .build/timings.tsv); scripts/ci/test.sh starts a fresh one.
Stages that run side by side each get their own row: the table shows when each started, so overlaps
are visible, and the total is wall-clock time from the first start to the last end, not a sum.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TIMINGS = Path(os.environ.get("GPULAB_TIMINGS", ROOT / ".build" / "timings.tsv"))
# molecule logs "<scenario> ➜ <action>: Executing" when an action starts (molecule/logger.py).
ACTION = re.compile(r"(?P<scenario>[\w.-]+) \u279c (?P<action>[\w-]+): Executing")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# Lines that say why a stage failed, closing the run's output where CI shows it: Ansible's task errors
# and pytest's failures first; molecule's and the scripts' own errors only when there are none of those.
WHY = re.compile(r"^\[ERROR\]: |^fatal: \[|^failed: \[|^FAILED |^E   ")
WHY_WEAK = re.compile(r"CRITICAL|ERROR[: ]|[Ee]rror: ")
# molecule draws a box around ansible's output and wraps long lines with an indent.
BOX = re.compile(r"^\s*[\u2502\u250c\u2514]\s?")
MSG = re.compile(r'"msg": "((?:[^"\\]|\\.)*)"')
WHY_LINES, WHY_WIDTH = 4, 320


def stage_log(name: str) -> Path:
    return TIMINGS.parent / "logs" / ("stage-" + re.sub(r"[^\w.-]+", "-", name).strip("-") + ".log")


def record(name: str, start: float, seconds: float, rc: int | None, parent: str = "") -> None:
    TIMINGS.parent.mkdir(parents=True, exist_ok=True)
    status = "" if rc is None else ("ok" if rc == 0 else f"FAILED (rc {rc})")
    with TIMINGS.open("a", encoding="utf-8") as out:
        out.write(f"{name}\t{start:.1f}\t{seconds:.1f}\t{status}\t{parent}\n")


def tee(cmd: list[str], log: Path | None = None, on_line=None) -> int:
    """Run CMD, pass its output through (and into LOG, the stage's log); its exit status."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", bufsize=1
    )
    assert proc.stdout is not None
    if log:
        log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w", encoding="utf-8") if log else open(os.devnull, "w", encoding="utf-8") as copy:
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            copy.write(line)
            if on_line:
                on_line(line)
    return proc.wait()


def run(name: str, cmd: list[str]) -> int:
    start = time.time()
    rc = tee(cmd, stage_log(name))
    record(name, start, time.time() - start, rc)
    return rc


def molecule(scenario: str) -> int:
    """Run the scenario; each action's row ends where the next one starts (or molecule exits)."""
    actions: list[tuple[str, float]] = []
    counts: dict[str, int] = {}

    def on_line(line: str) -> None:
        found = ACTION.search(ANSI.sub("", line))
        if found and found["scenario"] == scenario:
            action = found["action"]
            counts[action] = counts.get(action, 0) + 1
            # The sequence repeats destroy, verify and side_effect: number the repeats.
            label = action if counts[action] == 1 else f"{action} #{counts[action]}"
            actions.append((label, time.time()))

    rc = tee(["molecule", "test", "-s", scenario], on_line=on_line)  # the enclosing `run` keeps the log
    end = time.time()
    for i, (label, began) in enumerate(actions):
        finished = actions[i + 1][1] if i + 1 < len(actions) else end
        record(label, began, finished - began, None, parent=f"molecule {scenario}")
    return rc


def clock(seconds: float) -> str:
    seconds = round(seconds)
    return f"{seconds // 60:d}:{seconds % 60:02d}"


def table() -> int:
    if not TIMINGS.is_file():
        print("timing: no stages recorded")
        return 0
    stages, children = [], {}
    for line in TIMINGS.read_text(encoding="utf-8").splitlines():
        name, start, seconds, status, parent = line.split("\t")
        row = (name, float(start), float(seconds), status)
        (children.setdefault(parent, []) if parent else stages).append(row)
    if not stages:
        return 0
    stages.sort(key=lambda row: row[1])
    first = min(row[1] for row in stages)
    last = max(row[1] + row[2] for row in stages)
    width = max(28, *(len(row[0]) + 2 for row in stages))
    print("\n== make test: wall-clock time per stage (start: minutes after the first stage began) ==")
    print(f"{'stage':<{width}}  {'start':>7}  {'took':>7}  result")
    for name, start, seconds, status in stages:
        print(f"{name:<{width}}  {clock(start - first):>7}  {clock(seconds):>7}  {status}")
        for child in sorted(children.get(name, []), key=lambda row: row[1]):
            print(f"{'  ' + child[0]:<{width}}  {clock(child[1] - first):>7}  {clock(child[2]):>7}")
    failed = [row[0] for row in stages if row[3] != "ok"]
    print(f"{'total (wall clock)':<{width}}  {'':>7}  {clock(last - first):>7}  "
          f"{'FAILED: ' + ', '.join(failed) if failed else 'ok'}")  # fmt: skip
    for name in failed:
        print(f"== why {name} failed (last error lines of {stage_log(name)}):")
        for line in why(stage_log(name)):
            print("  " + line)
    return 1 if failed else 0


def why(log: Path) -> list[str]:
    if not log.is_file():
        return ["(no log)"]
    lines = [BOX.sub("", ANSI.sub("", line)) for line in log.read_text(encoding="utf-8", errors="replace").splitlines()]
    found: list[str] = []
    for i, line in enumerate(lines):
        if WHY.search(line):
            text = line.strip()
            for more in lines[i + 1 :]:  # molecule's wrapped continuation lines
                if not more.startswith("  ") or WHY.search(more):
                    break
                text += " " + more.strip()
            msg = MSG.search(text) if text.startswith(("fatal:", "failed:")) else None
            found.append(text.split(" => ")[0] + " msg: " + msg[1] if msg else text)
    found = found or [line.strip() for line in lines if WHY_WEAK.search(line)] or lines[-WHY_LINES:]
    return [line[:WHY_WIDTH] + ("\u2026" if len(line) > WHY_WIDTH else "") for line in found[-WHY_LINES:]]


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "run" and argv[2] == "--":
        return run(argv[1], argv[3:])
    if len(argv) == 2 and argv[0] == "molecule":
        return molecule(argv[1])
    if argv == ["table"]:
        return table()
    print(__doc__.strip(), file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
