"""The one way a stage script or a CLI command ends: a one-line error for what the user can fix,
exit 130 with a resume hint on Ctrl-C, a traceback only for bugs (or with ``RECON_DEBUG=1``)."""
from __future__ import annotations

import os
import sys
import traceback
from typing import Callable, Optional

from .errors import ReconError

INTERRUPTED = "interrupted: rerun to resume from the last snapshot"


def run(name: str, main: Callable[[], Optional[int]]) -> int:
    """Call ``main()`` and turn what escapes it into an exit status (0, 1, or 130)."""
    debug = os.environ.get("RECON_DEBUG", "") not in ("", "0")
    try:
        return int(main() or 0)
    except BrokenPipeError:
        # the reader went away (``recon info ... | head``): nothing more to say, and nothing to
        # flush into the closed pipe at exit
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print(f"\n{name}: {INTERRUPTED}", file=sys.stderr, flush=True)
        return 130
    except (ReconError, OSError) as exc:
        # OSError: the disk, a permission, a vanished file; its message names the path.
        if debug:
            traceback.print_exc()
        print(f"{name}: error: {exc}", file=sys.stderr, flush=True)
        return 1
