"""Starting a bench server process: its TLS material and its PORT line."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile


def make_ca(prefix: str, *names: str) -> tuple[str, str]:
    """A trustme CA for this run, in a directory removed at exit: (the
    server's key and certificate chain PEM for ``names``, the CA PEM)."""
    import trustme

    directory = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, directory, True)
    ca = trustme.CA()
    chain, ca_pem = os.path.join(directory, "server.pem"), os.path.join(directory, "ca.pem")
    ca.issue_cert(*names).private_key_and_cert_chain_pem.write_to_path(chain)
    ca.cert_pem.write_to_path(ca_pem)
    return chain, ca_pem


def spawn(cmd: list[str], what: str) -> tuple[subprocess.Popen[str], list[str]]:
    """Start ``cmd``, a server that prints ``PORT <number>...`` once it
    listens: the process and that line's words (killed, and RuntimeError,
    when it prints anything else)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"{what} did not start: {line!r}")
    return proc, line.split()
