"""`python -m jobs <stage> [flags]`: the container entrypoint."""

from __future__ import annotations

import importlib
import sys

from influence_core.errors import ConfigError, StorageError
from influence_core.runtime import handle_sigterm, is_main_process
from influence_core.stages import BY_NAME
from jobs.common import parse


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in BY_NAME:
        given = f"unknown stage {argv[0]!r}; " if argv else ""
        print(f"error: {given}usage: python -m jobs <stage> [flags], stage one of: {', '.join(BY_NAME)}",
              file=sys.stderr)
        return 2
    stage = BY_NAME[argv[0]]
    if stage.main_process_only and not is_main_process():
        return 0
    handle_sigterm()
    try:
        importlib.import_module(stage.module).main(parse(stage.settings, argv[1:], stage.name))
    except (ConfigError, StorageError) as error:
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except Exception as error:
        from influence_core.storage import describe_failure

        failure = describe_failure(error)
        if failure is None:
            raise
        print(f"error: {failure}", file=sys.stderr)
        return failure.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
