"""Where an apply's time goes: per play and per task wall time, from a run folder's runner events.

    .venv/bin/python bench/apply_profile.py ~/.cache/gpufleet/runs/<run>   [--top 25]
    .venv/bin/python bench/apply_profile.py --latest apply                  # the newest apply run

A task's wall time runs from its `playbook_on_task_start` event to the next task's (or play's, or
the stats') start, so it includes every host and every retry; a play's from its start to the
next play's. Reads only the local run folder that `gpufleet apply` kept (src/gpufleet/runner.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

BOUNDARIES = ("playbook_on_play_start", "playbook_on_task_start", "playbook_on_stats")


def events(run: Path) -> list[dict]:
    found = [json.loads(p.read_text()) for p in (run / "job_events").glob("*.json")]
    return sorted(found, key=lambda e: e.get("counter", 0))


def _time(event: dict) -> float:
    return datetime.fromisoformat(event["created"]).timestamp()


def profile(run: Path) -> dict:
    marks = [e for e in events(run) if e["event"] in BOUNDARIES]
    if not marks:
        raise SystemExit(f"{run}: no runner events (is it a gpufleet run folder?)")
    tasks, plays = [], []
    for i, event in enumerate(marks[:-1]):
        span = _time(marks[i + 1]) - _time(event)
        data = event.get("event_data", {})
        if event["event"] == "playbook_on_task_start":
            tasks.append({"play": data.get("play", ""), "task": data.get("task", ""), "seconds": span,
                          "path": data.get("task_path", "")})
    play_marks = [e for e in marks if e["event"] in ("playbook_on_play_start", "playbook_on_stats")]
    for i, event in enumerate(play_marks[:-1]):
        plays.append({"play": event["event_data"].get("play", ""),
                      "seconds": _time(play_marks[i + 1]) - _time(event)})
    return {"run": str(run), "seconds": _time(marks[-1]) - _time(marks[0]), "plays": plays, "tasks": tasks}


def latest(kind: str) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from gpufleet.runner import default_runs_dir

    runs = sorted(p for p in default_runs_dir().iterdir() if f"-{kind}-" in p.name and (p / "job_events").is_dir())
    if not runs:
        raise SystemExit(f"no {kind} run in {default_runs_dir()}")
    return runs[-1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", nargs="?", type=Path)
    parser.add_argument("--latest", metavar="KIND", help="the newest run of this kind (apply, status, ...)")
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    run = args.run or (latest(args.latest) if args.latest else None)
    if run is None:
        parser.error("give a run folder or --latest KIND")
    data = profile(run)
    if args.json:
        print(json.dumps(data, indent=1))
        return 0
    print(f"{data['run']}: {data['seconds']:.1f} s, {len(data['tasks'])} tasks")
    print("\nplays:")
    for play in data["plays"]:
        print(f"  {play['seconds']:7.1f} s  {play['play']}")
    print(f"\nslowest {args.top} tasks:")
    for task in sorted(data["tasks"], key=lambda t: -t["seconds"])[:args.top]:
        print(f"  {task['seconds']:7.1f} s  {task['play']} / {task['task']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
