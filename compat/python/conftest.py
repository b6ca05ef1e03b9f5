"""Starts `apogee standalone` on ephemeral loopback ports for the suite and
hands its gRPC endpoint to the tests (binary from $APOGEE_BIN, default
../../target/debug/apogee; $COMPAT_GRPC=host:port uses a running endpoint)."""

import os
import shutil
import subprocess
import tempfile
import threading
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


def unique(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def grpc_endpoint():
    external = os.environ.get("COMPAT_GRPC", "").strip()
    if external:
        yield external
        return
    binary = os.environ.get("APOGEE_BIN") or os.path.join(HERE, "..", "..", "target", "debug", "apogee")
    if not os.access(binary, os.X_OK):
        pytest.fail(f"apogee binary not found at {binary} (cargo build -p apogee, or set APOGEE_BIN)")
    work = tempfile.mkdtemp(prefix="apogee-compat-python")
    log = open(os.path.join(work, "apogee.log"), "wb")
    env = dict(os.environ)
    env.setdefault("APOGEE_LOG", "warn")
    proc = subprocess.Popen(
        [binary, "standalone", "--namesrv-port", "0", "--listen-port", "0",
         "--set", "bindAddress=127.0.0.1", "--set", "brokerIP1=127.0.0.1",
         "--set", "diskSpaceWarningLevelRatio=100", "--set", "diskSpaceCleanForciblyRatio=100",
         "--set", "diskMaxUsedSpaceRatio=100",
         "--set", "transactionCheckInterval=1000", "--set", "transactionTimeOut=3000"],
        cwd=work, stdout=subprocess.PIPE, stderr=log, env=env,
    )
    found = {}
    ready = threading.Event()

    def read():
        for raw in proc.stdout:
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith("apogee grpc listening on "):
                found["grpc"] = line[len("apogee grpc listening on "):]
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    ready.wait(60)
    if "grpc" not in found:
        proc.kill()
        pytest.fail("apogee standalone did not print its gRPC address")
    try:
        yield found["grpc"]
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
        shutil.rmtree(work, ignore_errors=True)
