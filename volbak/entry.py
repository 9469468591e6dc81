"""The ``volbak`` command's entry point, kept tiny: signals are held back before the
first heavy import, so a Ctrl-C or SIGTERM in the first few hundred milliseconds ends
the run cleanly (exit 130/143) instead of with a traceback from an import."""

import signal


def main() -> int:
    # volbak.cli.main installs the handlers, then releases what arrived meanwhile.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    from volbak.cli import main as cli_main

    return cli_main()
