"""Install the lowest version setup.cfg allows of every dependency (tox -e lowest).

Reads install_requires and the 'test' extra, pins each requirement with a
lower bound (``name>=X``) to ``name==X`` and pip-installs them all at once, over
whatever tox resolved; then prints what is installed, so the log shows the
versions the tests ran with.  A requirement without a lower bound is an error:
every dependency must declare the oldest version it is tested with.
"""

from __future__ import annotations

import configparser
import re
import subprocess
import sys

EXTRAS = ("test",)


def floors(setup_cfg: str) -> list[str]:
    cfg = configparser.ConfigParser()
    cfg.read(setup_cfg)
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in EXTRAS:
        lines += cfg["options.extras_require"][extra].splitlines()
    pins = []
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+(?:\[[^\]]+\])?)\s*>=\s*([0-9][^,;\s]*)", line)
        if not m:
            sys.exit(f"lowest: {line!r} has no single lower bound (name>=version): say the oldest version it works with")
        pins.append(f"{m[1]}=={m[2]}")
    return pins


def main() -> None:
    pins = floors(sys.argv[1])
    print("lowest: installing", " ".join(pins), flush=True)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", *pins], capture_output=True, text=True)
    # pip's notes about index locations this machine's pip.conf names but lacks are noise here
    sys.stderr.write("".join(line + "\n" for line in done.stderr.splitlines() if "is ignored: it is neither" not in line))
    if done.returncode:
        sys.exit(f"lowest: pip could not install the floors (exit {done.returncode})")
    subprocess.run([sys.executable, "-m", "pip", "check"], check=True)
    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze"], check=True, capture_output=True, text=True).stdout
    print("lowest: installed", ", ".join(line for line in freeze.splitlines() if "==" in line), flush=True)


if __name__ == "__main__":
    main()
