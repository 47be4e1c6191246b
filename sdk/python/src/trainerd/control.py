"""The protocol's signals (section 4) turned into flags the loop checks at its own boundaries."""

import signal
import threading


class Control:
    """SIGUSR1 asks for a pause at the end of the epoch; SIGTERM for a stop at the next step. The
    handlers only set flags: nothing is written or saved from inside a signal handler."""

    def __init__(self):
        self.pause = threading.Event()
        self.stop = threading.Event()

    def install(self):
        """Installs the handlers (from the main thread, as Python requires). Returns self."""
        signal.signal(signal.SIGUSR1, lambda *_: self.pause.set())
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        # Python installs handlers that interrupt system calls (EINTR). A signal that lands while a
        # rank waits in a collective must not break the library's socket reads (gloo, NCCL's
        # bootstrap): the flag is all it should do, so interrupted calls are restarted.
        for sig in (signal.SIGUSR1, signal.SIGTERM):
            signal.siginterrupt(sig, False)
        return self
