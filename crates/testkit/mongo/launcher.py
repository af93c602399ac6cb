"""Starts one SecantusDB server for a test: a single-node replica set with
the given name, on the given port, storing in the given folder. Prints
`listening <uri>` once it accepts connections; stops on SIGTERM/SIGINT.

usage: launcher.py PORT STORAGE_DIR REPLICA_SET_NAME [OPLOG_MAX_ENTRIES]
"""
import signal
import sys
import threading

from secantus import SecantusDBServer

port, path, name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
extra = {}
if len(sys.argv) > 4:
    extra["oplog_max_entries"] = int(sys.argv[4])
srv = SecantusDBServer("127.0.0.1", port, path, replica_set_name=name,
                       enable_test_commands=False, **extra)
srv.start()
print(f"listening {srv.uri}", flush=True)
stop = threading.Event()
for s in (signal.SIGTERM, signal.SIGINT):
    signal.signal(s, lambda *_: stop.set())
stop.wait()
srv.stop()
