"""``kilowatt quickstart``: the whole product on one small real workload, end to end.

Plan the digits CNN, train it with checkpoints, metering and tracking, register it with
lineage to its data and run, serve it with ``kilowatt serve``, load-test it, and report
accuracy, time, energy, cost, CO2e and latency in the terminal and as an HTML page.

    >>> from kilowatt.cli.quickstart import QuickstartOptions, run_quickstart
    >>> report, html_path = run_quickstart(QuickstartOptions(fast=True), console)  # doctest: +SKIP
"""

from kilowatt.cli.quickstart.pipeline import Interrupted, QuickstartOptions, run_quickstart
from kilowatt.cli.quickstart.report import QuickstartReport

__all__ = ["Interrupted", "QuickstartOptions", "QuickstartReport", "run_quickstart"]
