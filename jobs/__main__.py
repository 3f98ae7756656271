"""`python -m jobs <stage> [flags]`: the container entrypoint."""

from __future__ import annotations

import importlib
import sys

from influence_core.errors import ConfigError, StorageError
from influence_core.runtime import handle_sigterm

STAGES = ("train", "fit_factors", "inspect_factors", "compute_scores", "compute_self_scores", "inspect_scores",
          "preview_data", "pipeline", "fetch_report", "evaluate", "lds", "import_model")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in STAGES:
        given = f"unknown stage {argv[0]!r}; " if argv else ""
        print(f"error: {given}usage: python -m jobs <stage> [flags], stage one of: {', '.join(STAGES)}",
              file=sys.stderr)
        return 2
    stage = importlib.import_module(f"jobs.{argv[0]}")
    handle_sigterm()
    try:
        stage.run(argv[1:])
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
