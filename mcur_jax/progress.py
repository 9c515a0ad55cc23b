"""The console line of a run's progress: epochs done, the pace and the
time left (`Progress`), and durations as people read them."""

import math
import sys
import time

import numpy as np


class Progress:
  """A one-line progress bar over epochs (a line per epoch when not a TTY),
  with the time an epoch takes and the time left.

  The first epoch of a run (of each fold, each sweep point) includes
  compiling, or loading the compiled programs, so the rate and the time
  left come from the later ones. `best` is the best validation score of
  the epochs before this process's first (a resumed run's). `clock` is
  injectable for tests."""

  def __init__(self, total: int, enabled: bool = True, stream=None,
               clock=time.monotonic, best: float = -math.inf):
    self.total, self.enabled = total, enabled
    self.stream = stream or sys.stdout  # sys.stdout as it is now.
    self.tty = self.stream.isatty()
    self.best = best
    self.clock = clock
    self.started = self.last = clock()
    self.seconds = []  # Per epoch this process ran.
    self.shown = 0  # Length of the line on a TTY, which a shorter one covers.

  def update(self, epoch, stats, score, name):
    if not self.enabled:
      return
    now = self.clock()
    self.seconds.append(now - self.last)
    self.last = now
    self.best = max(self.best, float(np.max(score)))
    width = 20
    done = width * epoch // self.total
    count = len(self.seconds)
    if epoch == self.total:
      pace = (f"{clock_time(now - self.started)} for {count} epoch"
              f"{'s' if count > 1 else ''}")
    elif count == 1:
      pace = f"{_seconds(self.seconds[0])}, compiling included"
    else:
      rate = float(np.mean(self.seconds[1:]))
      left = clock_time(rate * (self.total - epoch))
      pace = f"{_seconds(rate)}/epoch, {left} of training left"
    line = (f"[{'#' * done}{'.' * (width - done)}] epoch {epoch}/{self.total}"
            f" loss {np.mean(stats['loss']):.4f} valid avg {name} "
            f"{np.mean(score):.4f} (best {'seed ' * (np.size(score) > 1)}"
            f"so far {self.best:.4f}); {pace}")
    if self.tty:
      self.stream.write("\r" + line.ljust(self.shown))
      self.shown = len(line)
    else:
      self.stream.write(line + "\n")
    self.stream.flush()

  def close(self):
    if self.enabled and self.tty:
      self.stream.write("\n")


def _seconds(seconds: float) -> str:
  """A duration to 3 digits ("0.0812 s", "26.2 s"), as m:ss from 100 s."""
  return f"{seconds:.3g} s" if seconds < 99.95 else clock_time(seconds)


def clock_time(seconds: float) -> str:
  """Seconds as m:ss, or h:mm:ss from an hour."""
  minutes, secs = divmod(round(seconds), 60)
  hours, minutes = divmod(minutes, 60)
  if hours:
    return f"{hours}:{minutes:02d}:{secs:02d}"
  return f"{minutes}:{secs:02d}"
