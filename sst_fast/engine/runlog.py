"""A training run's console and files: the run logger, progress (a bar on a terminal, plain lines without one),
TensorBoard, the stop signals, and the version record. The plumbing around :class:`sst_fast.engine.train.Trainer`."""

from __future__ import annotations

import logging
import math
import platform
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from ..protocol import code_version
from . import distributed

LOGGER_NAME = "sst_fast.train"


def versions() -> dict:
    """What ran: code version (with the git commit), torch, CUDA, python, platform, the command line."""
    return {
        "code_version": code_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "command": sys.argv,
    }


def ignore_interrupts(_worker_id: int) -> None:
    # Ctrl-C and a group-wide SIGTERM (timeout, batch schedulers) reach the workers too: they leave them to the
    # main process, which stops cleanly and then shuts them down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@contextmanager
def stop_on_signals(request_stop):
    """The first SIGINT/SIGTERM asks the loop to stop after the current step; a second SIGINT aborts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, _frame):
        signal.signal(signal.SIGINT, signal.default_int_handler)
        request_stop("interrupted" if signum == signal.SIGINT else "terminated")

    for sig in previous:
        signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def summary_writer(folder: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is a dependency; a broken install still trains, with the JSON log
        logging.getLogger(LOGGER_NAME).warning("tensorboard is not importable: no TensorBoard scalars")
        return None
    return SummaryWriter(str(folder), purge_step=purge_step)


class NoBar:
    def update(self, _n):
        pass

    def set_postfix(self, *_args, **_kwargs):
        pass

    def close(self):
        pass


class ProgressLines:
    """Progress without a terminal (batch jobs, ``nohup``, CI): a plain log line every ``seconds`` seconds (and at
    the first and last step) with the step, the loss, the speed and the time left, instead of a bar whose
    carriage returns a log file would run together."""

    def __init__(self, total: int, initial: int, seconds: float, log: logging.Logger) -> None:
        self.total, self.step, self.seconds, self.log = total, initial, seconds, log
        self.start_step, self.started = initial, time.perf_counter()
        self.last: float | None = None
        self.loss: str | None = None

    def update(self, n: int) -> None:
        self.step += n
        now = time.perf_counter()
        if self.last is None or now - self.last >= self.seconds or self.step >= self.total:
            self.last = now
            self.log.info("%s", self.line(now))

    def line(self, now: float) -> str:
        rate = (self.step - self.start_step) / max(now - self.started, 1e-9)
        left = (self.total - self.step) / rate if rate > 0 else math.inf
        loss = f", loss {self.loss}" if self.loss is not None else ""
        percent = 100 * self.step / max(self.total, 1)
        return f"step {self.step}/{self.total} ({percent:.0f}%){loss}, {rate:.2f} steps/s, ETA {duration(left)}"

    def set_postfix(self, loss: str | None = None, refresh: bool = True) -> None:
        self.loss = loss

    def close(self) -> None:
        pass


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "-"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s"


def progress_bar(total: int, initial: int, enabled: bool, seconds: float = 30.0, log=None):
    """A tqdm bar on a terminal, plain progress lines without one (:class:`ProgressLines`), nothing if disabled."""
    if not enabled:
        return NoBar()
    if not is_terminal(sys.stderr):
        return ProgressLines(total, initial, seconds, log or logging.getLogger(LOGGER_NAME))
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)


def is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


class TqdmHandler(logging.Handler):
    """Console log lines that do not tear the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


FILE_ONLY = "file_only"  # a record with this attribute set goes to the log file, not to the console


class _NotFileOnly(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(record, FILE_ONLY, False)


class RunLogFile(logging.FileHandler):
    """The run's ``train.log``. A file-only record it cannot write (the disk that failed the run is full) is
    dropped without a word: the error it records reaches the user anyway, as the exception."""

    def handleError(self, record: logging.LogRecord) -> None:
        if not getattr(record, FILE_ONLY, False):
            super().handleError(record)


def run_logger(path: Path | None, world: distributed.World | None = None) -> logging.Logger:
    """The ``sst_fast.train`` logger writing to ``path`` (all records) and the console (INFO and up). The other
    ranks of a run on several processes (``path`` None) print only errors, marked with their rank."""
    logger = close_logger()
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    if path is not None:
        file_handler = RunLogFile(path)
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(file_handler)
    world = world or distributed.World()
    console = TqdmHandler(logging.INFO if world.main else logging.ERROR)
    console.setFormatter(logging.Formatter(f"[rank {world.rank}] %(message)s" if world.distributed else "%(message)s"))
    console.addFilter(_NotFileOnly())
    logger.addHandler(console)
    return logger


def log_fatal(logger: logging.Logger, error: BaseException, where: str, traceback: bool = True) -> None:
    """Record in the run's log file the error that ends the run (``where``: e.g. "after step 3"), with its
    traceback unless ``traceback`` is false. Not on the console: the exception goes on to the caller, and
    the command line prints it there once."""
    logger.error(
        "the run ends %s: %s: %s",
        where,
        type(error).__name__,
        error,
        exc_info=error if traceback else None,
        extra={FILE_ONLY: True},
    )


def close_logger() -> logging.Logger:
    """Detach (and close) the handlers of the ``sst_fast.train`` logger; returns the logger."""
    logger = logging.getLogger(LOGGER_NAME)
    for handler in list(logger.handlers):
        handler.close()
        logger.removeHandler(handler)
    return logger


def percent(value) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.2f}%"
