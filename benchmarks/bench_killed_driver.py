"""What a killed driver leaves running: the Ray processes of its local instance, and for how long.

Starts ``keypatch propose --engine ray`` (a local Ray instance, 2 one-thread actors, ``random:small``)
in a session of its own, waits for its first records, kills the driver alone with SIGKILL (as an
out-of-memory killer or a lost terminal would), then lists every second the processes still in that
session (Ray's processes stay in it) until none is left or ``--limit`` seconds pass. Prints each
process's command name and how long it outlived the driver. Run from the repository root::

    python benchmarks/bench_killed_driver.py
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_concurrent import make_photos  # noqa: E402
from bench_vitb import cpu_name  # noqa: E402

from keypatch.store import ResultStore  # noqa: E402


def session_processes(sid: int) -> dict[int, str]:
    """``pid: what it runs`` of the processes whose session id is ``sid``."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                found[int(entry.name)] = short(cmd or stat.split("(", 1)[1].split(")")[0])
        except (OSError, IndexError, ValueError):
            continue
    return found


def short(cmd: str) -> str:
    """A process's command line cut to what names it (Ray's own names where it gives them)."""
    for name in ("gcs_server", "raylet", "dashboard/agent.py", "runtime_env/agent", "log_monitor", "monitor.py",
                 "ray::IDLE", "ray::ProposeActor", "ray::MapWorker", "default_worker.py", "keypatch.cli"):
        if name in cmd:
            return name
    return cmd[:60]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--limit", type=float, default=240, help="seconds to watch after the kill")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_photos(tmp / "photos", 12)
        out = tmp / "out"
        cmd = [sys.executable, "-m", "keypatch.cli.main", "propose", str(tmp / "photos"), "--ratio", "0.05",
               "--model", "random:small", "--engine", "ray", "--workers", "2", "--quiet", "--out", str(out)]
        child = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        while not (out / "results.sqlite").exists() or count(out) < 2:
            if child.poll() is not None:
                raise SystemExit("the driver ended before its second record")
            time.sleep(0.5)
        before = session_processes(child.pid)
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        killed = time.perf_counter()
        print(f"# {cpu_name()}, {os.cpu_count()} cores; driver killed after {count(out)} records with "
              f"{len(before)} processes in its session")
        last_seen: dict[int, tuple[str, float]] = {}
        while time.perf_counter() - killed < args.limit:
            now = session_processes(child.pid)
            for pid, name in now.items():
                last_seen[pid] = (name, time.perf_counter() - killed)
            if not now:
                break
            time.sleep(1)
        left = session_processes(child.pid)
        print("\n| process | outlived the driver by (s) |\n|---|---|")
        for pid, (name, seconds) in sorted(last_seen.items(), key=lambda x: x[1][1]):
            print(f"| {name} (pid {pid}) | {'> ' if pid in left else '~'}{seconds:.0f} |")
        if left:
            print(f"\n{len(left)} still running after {args.limit:.0f} s: killed now")
            os.killpg(child.pid, signal.SIGKILL)


def count(out: Path) -> int:
    with ResultStore(out / "results.sqlite", create=False) as s:
        return len(s.records())


if __name__ == "__main__":
    main()
