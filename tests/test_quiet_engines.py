"""Keeping TensorFlow's and the engines' C++ logs off the terminal without taking stderr from other threads."""

from __future__ import annotations

import os
import threading
import time

from cbir.features._tensorflow import captured_stderr


def test_redirections_from_two_threads_leave_stderr_where_it_was():
    """Unserialised, the second thread restored the first one's temporary file as fd 2."""
    before = os.fstat(2)

    def second():
        with captured_stderr():
            time.sleep(0.3)

    with captured_stderr():
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.15)  # let the other thread try to redirect meanwhile
    thread.join()
    after = os.fstat(2)
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)


def test_what_the_block_printed_on_fd_2_is_captured_not_shown(capfd):
    with captured_stderr() as captured:
        os.write(2, b"engine chatter\n")
    assert captured.read() == "engine chatter\n"
    assert capfd.readouterr().err == ""
