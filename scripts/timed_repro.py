"""Run `dvc repro`, streaming its output, and record each stage's wall time in
eval/pipeline_timing.json (read by `make bench` and the README)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    dvc = str(Path(sys.executable).with_name("dvc"))
    start = time.perf_counter()
    stages, current, t0 = [], None, start
    proc = subprocess.Popen(
        [dvc, "repro", *sys.argv[1:]], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    for line in proc.stdout:
        sys.stdout.write(line)
        m = re.match(r"Running stage '([^']+)'", line)
        if m:
            now = time.perf_counter()
            if current:
                stages.append({"stage": current, "seconds": round(now - t0, 1)})
            current, t0 = m.group(1), now
    rc = proc.wait()
    end = time.perf_counter()
    if current:
        stages.append({"stage": current, "seconds": round(end - t0, 1)})
    if stages and rc == 0:
        Path("eval").mkdir(exist_ok=True)
        Path("eval/pipeline_timing.json").write_text(
            json.dumps({"total_s": round(end - start, 1), "stages": stages}, indent=1)
        )
        print(f"dvc repro: {end - start:.0f} s")
    return rc


if __name__ == "__main__":
    sys.exit(main())
