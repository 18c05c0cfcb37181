"""`stepline run` on a terminal draws its live display (rich Live) and ends with the result."""

from __future__ import annotations

import os
import pty
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_run_on_a_terminal_shows_the_live_table_and_the_result(tmp_path: Path) -> None:
    main, replica = pty.openpty()
    stepline = shutil.which("stepline") or str(Path(sys.executable).parent / "stepline")
    done = subprocess.run(
        [
            stepline,
            "run",
            "examples/diamond/farm_readings.yaml",
            "--db",
            f"sqlite:///{tmp_path}/t.db",
        ],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=replica,
        stderr=replica,
        timeout=120,
        env={**os.environ, "COLUMNS": "120", "TERM": "xterm"},
        check=False,
    )
    os.close(replica)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(main)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", b"".join(chunks).decode("utf-8", "replace"))
    assert done.returncode == 0, text
    assert "Traceback" not in text, text
    assert "4/4 done, 0 running, 0 failed" in text, text
    assert "temperature_stats" in text, text  # the table of steps was drawn
    assert "instance 1 of farm_readings succeeded in" in text, text
