"""The program a stand-in qemu runs (:class:`ceilometer_cmt.testing.fakehost.StandInQemu`).

Started as ``python -I -S standin_qemu.py -name guest=<domain> --cmt-mode
sleep|burn --cmt-threads N``: its command line names the guest as libvirt's
qemu does, it runs ``1 + N`` threads which sleep, or burn CPU after SIGUSR1
until SIGUSR2, and it prints ``ready`` once every thread exists. It imports
nothing but the standard library (``-I -S``: no site-packages, no plugin).
"""

import signal
import sys
import threading
import time


def main(argv: list[str]) -> None:
    mode = [argv[argv.index("--cmt-mode") + 1]]
    threads = int(argv[argv.index("--cmt-threads") + 1])

    def set_mode(value: str) -> None:
        mode[0] = value

    signal.signal(signal.SIGUSR1, lambda *_: set_mode("burn"))
    signal.signal(signal.SIGUSR2, lambda *_: set_mode("sleep"))

    def work() -> None:
        while True:
            if mode[0] == "burn":
                end = time.monotonic() + 0.01
                while time.monotonic() < end:
                    pass
            else:
                time.sleep(0.05)

    for _ in range(threads):
        threading.Thread(target=work, daemon=True).start()
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    sys.stdout.close()
    work()


if __name__ == "__main__":
    main(sys.argv)
