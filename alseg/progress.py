"""Progress bars that suit where they are shown.

On a terminal: tqdm's live bar. Anywhere else (CI, a Ray job's log, ``> file``): one plain line per
bar at most every 30 s, and its final state, so a log file holds progress without a redraw per
step.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

LOG_INTERVAL_S = 30.0


def progress_bar(**kwargs: Any) -> Any:
    """A tqdm bar (same arguments) that writes plain lines when stderr is not a terminal."""
    from tqdm import tqdm
    from tqdm.auto import tqdm as live

    stream = kwargs.get("file") or sys.stderr
    if kwargs.get("disable") or getattr(stream, "isatty", lambda: False)():
        return live(**kwargs)

    class LineBar(tqdm):
        _line_t = -math.inf
        _final = False

        def display(self, msg: str | None = None, pos: int | None = None) -> bool:
            # every redraw tqdm asks for (set_postfix refreshes at once) is at most one line per
            # interval; the first state and the final one always
            now = time.monotonic()
            if not self._final and now - self._line_t < LOG_INTERVAL_S:
                return True
            self._line_t = now
            text = (self.__str__() if msg is None else msg).strip()
            if text:
                self.fp.write(text + "\n")
                self.fp.flush()
            return True

        def close(self) -> None:
            if self.disable:
                return
            self._final = True
            self.display()  # the final state, then no clearing of the line
            self.disable = True
            self._decr_instances(self)

    kwargs.update(mininterval=LOG_INTERVAL_S, maxinterval=LOG_INTERVAL_S, dynamic_ncols=False, ncols=100, ascii=True)
    return LineBar(**kwargs)
