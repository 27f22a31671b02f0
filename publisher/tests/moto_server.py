"""moto's S3 API server on 127.0.0.1, on a port the OS picks, for
publisher/tests/publisher.rs.

Prints `moto listening on http://127.0.0.1:<port>` once it accepts
connections, then serves until its stdin closes (the test process exited
or dropped the pipe), so that no server outlives the tests.

    .cache/venv-moto/bin/python publisher/tests/moto_server.py
"""

import sys

from moto.server import ThreadedMotoServer


def main() -> None:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    print(f"moto listening on http://{host}:{port}", flush=True)
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    main()
