"""Run train.py's command line for many argument lists, importing torch once: fork per case.

    python tests/reliability/fork_runner.py cases.json

cases.json holds [{"argv": [...], "out": dir}, ...]; each case's exit code, stdout and stderr
land in `out`/returncode, stdout, stderr. A child runs exactly what `python train.py ARGV` runs
after its imports (train.cli()), so a table of 20 bad inputs costs one interpreter start, not 20.
"""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run_case(argv: list[str], out: Path) -> int:
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        for fd, name in ((1, "stdout"), (2, "stderr")):
            os.dup2(os.open(out / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
        sys.argv = ["train.py", *argv]
        code = 1
        try:
            train.cli()
            code = 0
        except SystemExit as exit_:
            code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
        except BaseException:  # as the interpreter would: a traceback and status 1
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    os.chdir(REPO)
    sys.path.insert(0, str(REPO))
    import train

    for case in json.loads(Path(sys.argv[1]).read_text()):
        out = Path(case["out"])
        (out / "returncode").write_text(str(run_case(case["argv"], out)))
