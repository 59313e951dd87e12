"""Write the offline intersphinx inventories: python.inv and twisted.inv.

The docs build must pass with -W on a machine without network access (CI), so
docs/conf.py lists these files as the fallback of the online inventories: the
online ones are used when reachable, these otherwise.  They hold only the names
the docs link to.  Run this file again after adding a name:

    python docs/_inventories/build.py
"""

from __future__ import annotations

import zlib
from pathlib import Path

HERE = Path(__file__).parent

PYTHON = {
    # name: (role, page#anchor relative to https://docs.python.org/3/)
    **{e: ("exception", f"library/exceptions.html#{e}") for e in (
        "Exception", "ValueError", "TypeError", "RuntimeError", "KeyError", "OSError", "ConnectionError",
        "TimeoutError",
    )},
    **{t: ("class", f"library/stdtypes.html#{t}") for t in ("dict", "str", "bytes", "list", "tuple", "int", "float")},
    "bool": ("class", "library/functions.html#bool"),
    "object": ("class", "library/functions.html#object"),
    "typing.Any": ("data", "library/typing.html#typing.Any"),
    "collections.abc.Mapping": ("class", "library/collections.abc.html#collections.abc.Mapping"),
    "collections.abc.Sequence": ("class", "library/collections.abc.html#collections.abc.Sequence"),
    "collections.abc.Iterable": ("class", "library/collections.abc.html#collections.abc.Iterable"),
    "collections.abc.Callable": ("class", "library/collections.abc.html#collections.abc.Callable"),
    "collections.abc.AsyncIterator": ("class", "library/collections.abc.html#collections.abc.AsyncIterator"),
    "asyncio.Future": ("class", "library/asyncio-future.html#asyncio.Future"),
    "asyncio.CancelledError": ("exception", "library/asyncio-exceptions.html#asyncio.CancelledError"),
}

TWISTED = {
    # name: role; the page is https://docs.twisted.org/en/stable/api/<the name's module or class>.html
    "twisted.internet.defer.Deferred": "class",
    "twisted.internet.defer.CancelledError": "exception",
    "twisted.internet.defer.ensureDeferred": "function",
    "twisted.internet.task.react": "function",
    "twisted.internet.interfaces.IPushProducer": "class",
    "twisted.internet.interfaces.IReactorTime": "class",
    "twisted.internet.interfaces.IReactorTCP": "class",
    "twisted.internet.ssl.CertificateOptions": "class",
    "twisted.internet.asyncioreactor.AsyncioSelectorReactor": "class",
    "twisted.web.iweb.IAgent": "class",
    "twisted.web.iweb.IPolicyForHTTPS": "class",
    "twisted.web.client.Agent": "class",
    "twisted.web.client.HTTPConnectionPool": "class",
    "twisted.web.client.BrowserLikePolicyForHTTPS": "class",
    "twisted.web.client.ProxyAgent": "class",
    "twisted.python.failure.Failure": "class",
    "twisted.logger.Logger": "class",
}


def write(path: Path, project: str, lines: list[str]) -> None:
    header = f"# Sphinx inventory version 2\n# Project: {project}\n# Version: \n# The remainder of this file is compressed using zlib.\n"
    path.write_bytes(header.encode() + zlib.compress(("\n".join(lines) + "\n").encode()))


def main() -> None:
    write(HERE / "python.inv", "Python", [f"{name} py:{role} 1 {page} -" for name, (role, page) in sorted(PYTHON.items())])
    lines = []
    for name, role in sorted(TWISTED.items()):
        page = name if role in ("class", "exception") else name.rsplit(".", 1)[0]
        anchor = "" if role in ("class", "exception") else "#" + name.rsplit(".", 1)[1]
        lines.append(f"{name} py:{role} 1 {page}.html{anchor} -")
    write(HERE / "twisted.inv", "Twisted", lines)


if __name__ == "__main__":
    main()
