"""Accounting for every input row: rejected rows are reported, counts end on stderr."""

from __future__ import annotations

import csv
import io
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from smcli.errors import InputError


def say(command: str, message: str) -> None:
    """One line on stderr, prefixed with the command name."""
    print(f"smcli {command}: {message}", file=sys.stderr, flush=True)


def warn(command: str, message: str) -> None:
    say(command, f"warning: {message}")


@dataclass
class Reject:
    source: str
    location: str
    reason: str


@dataclass
class RunReport:
    """Collects rejected rows of one run and prints the closing counts.

    The first ``show`` rejects are printed as they happen; all of them go to ``errors_path``
    (Parquet, or CSV when the name ends in .csv). With ``strict`` the first reject is fatal.
    """

    command: str
    errors_path: Path | None = None
    strict: bool = False
    show: int = 20
    rejects: list[Reject] = field(default_factory=list)

    def reject(self, source: str, location: str, reason: str) -> None:
        where = f"{source}:{location}" if location else source
        if self.strict:
            raise InputError(f"{where}: {reason} (--strict)")
        self.rejects.append(Reject(source, location, reason))
        if len(self.rejects) <= self.show:
            say(self.command, f"rejected {where}: {reason}")
        elif len(self.rejects) == self.show + 1:
            hint = f"; all in {self.errors_path}" if self.errors_path else "; use --errors FILE for all"
            say(self.command, f"more rejected rows not shown{hint}")

    def write_errors(self) -> None:
        if self.errors_path is None:
            return
        from smcli.stage import AtomicFile, OutputTarget, new_meta, write_table

        cols = {
            "source": [r.source for r in self.rejects],
            "location": [r.location for r in self.rejects],
            "reason": [r.reason for r in self.rejects],
        }
        if self.errors_path.suffix.lower() == ".csv":
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(cols.keys())
            w.writerows(zip(*cols.values()))
            with AtomicFile(self.errors_path) as out:  # a failed write leaves no temporary
                out.handle.write(buf.getvalue().encode())
        else:
            table = pa.table(cols, schema=pa.schema([(k, pa.string()) for k in cols]))
            meta = new_meta("errors", {"command": self.command})
            write_table(OutputTarget(self.errors_path), table, meta)

    def finish(self, **counts: int) -> None:
        """Write the error report and print ``read N, written M, rejected K`` on stderr."""
        self.write_errors()
        parts = [f"{name.replace('_', ' ')} {value:,}" for name, value in counts.items()]
        say(self.command, ", ".join(parts))


class Progress:
    """A progress bar on stderr (images done, rate, ETA) for a stage over ``total`` items;
    does nothing unless ``enabled``."""

    def __init__(self, label: str, total: int, enabled: bool):
        self.enabled = enabled
        self._bar = None
        if enabled and total:
            import time

            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as Bar

            self._clock = time.perf_counter
            self._bar = Bar(
                TextColumn(label), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"),
                TimeRemainingColumn(), console=Console(stderr=True), transient=False,
            )
            self._task = self._bar.add_task(label, total=total, rate="")
            self._bar.start()
            self._t0 = self._clock()
            self._done = 0

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._done += n
            rate = self._done / max(1e-9, self._clock() - self._t0)
            self._bar.update(self._task, advance=n, rate=f"{rate:.1f} img/s")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
