"""``handling_signals``: the one way kilowatt turns SIGTERM/SIGINT into an orderly stop."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from kilowatt.signals import handling_signals


def test_handles_inside_the_block_and_restores_after_it() -> None:
    seen: list[int] = []
    before = signal.getsignal(signal.SIGTERM)
    with handling_signals(lambda signum, frame: seen.append(signum)) as installed:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGINT)
    assert installed and seen == [signal.SIGTERM, signal.SIGINT]
    assert signal.getsignal(signal.SIGTERM) is before


def test_restores_the_previous_handlers_when_the_block_raises() -> None:
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(RuntimeError, match="boom"), handling_signals(signal.SIG_IGN):
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        raise RuntimeError("boom")
    assert signal.getsignal(signal.SIGINT) is before


def test_off_the_main_thread_it_installs_nothing() -> None:
    results: list[bool] = []

    def worker() -> None:
        with handling_signals(signal.SIG_IGN) as installed:
            results.append(installed)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert results == [False]
