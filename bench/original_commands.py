"""The original project's "Complete Pipeline", verbatim, at the full defaults (the demo corpus, 600
documents, 10 epochs), on a fresh folder: each command's exit code and seconds; then a second
prompts file scored and reported by compute_scores.py and inspect_scores.py alone. Writes
docs/results/original_commands.md (tests/test_original_commands.py runs the same commands on a
smaller corpus).

    python bench/original_commands.py
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.test_original_commands import NEW_PROMPTS, ORIGINAL  # noqa: E402 (the one list of the commands)

SECOND = ["python compute_scores.py --scores_name new_scores --prompts new_prompts.json",
          "python inspect_scores.py --scores_name new_scores --num_influential 5"]


def main() -> None:
    env = {key: value for key, value in os.environ.items() if key not in ("ARTIFACTS_URI", "ENSEMBLE_SEEDS")}
    rows = []
    with tempfile.TemporaryDirectory(prefix="original-") as folder:
        (Path(folder) / "new_prompts.json").write_text(json.dumps(NEW_PROMPTS))
        for command in [*ORIGINAL, *SECOND]:
            words = command.split()
            started = time.time()
            result = subprocess.run([sys.executable, str(ROOT / words[1]), *words[2:]], cwd=folder, env=env,
                                    capture_output=True, text=True)
            rows.append((command, result.returncode, time.time() - started))
            print(f"exit {result.returncode}  {rows[-1][2]:6.1f} s  {command}", flush=True)
            if result.returncode:
                print(result.stderr[-3000:], file=sys.stderr)
                break
        reports = sorted(str(path.relative_to(folder)) for path in Path(folder).rglob("*_report.md"))
    lines = ["# The original project's commands, at the defaults", "",
             f"{date.today().isoformat()}, {platform.machine()} with {os.cpu_count()} cores, `python "
             "bench/original_commands.py`: the original README's Complete Pipeline, verbatim, on a fresh folder (its "
             "`./artifacts`), then a second prompts file by compute_scores.py and inspect_scores.py alone.", "",
             "| command | exit code | seconds |", "|---|---|---|",
             *[f"| `{command}` | {code} | {seconds:.0f} |" for command, code, seconds in rows], "",
             f"Reports written: {', '.join(f'`{report}`' for report in reports)}.", ""]
    (ROOT / "docs/results/original_commands.md").write_text("\n".join(lines))
    sys.exit(max(code for _, code, _ in rows))


if __name__ == "__main__":
    main()
