"""Copies the test executables named in cargo's JSON messages (stdin, from `cargo test --no-run
--message-format=json...`) into DEST, and writes DEST/list: their file names, one a line, sorted.
Used by ci/qemu.sh (the VMs' initramfs) and benches/lent-machine.sh (a lent machine's tests).

usage: cargo test ... --no-run --message-format=json-render-diagnostics | python3 ci/collect-tests.py DEST
"""

import json
import os
import shutil
import sys

dest = sys.argv[1]
names = []
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("reason") == "compiler-artifact" and msg.get("executable") and msg["profile"]["test"]:
        name = os.path.basename(msg["executable"])
        shutil.copy(msg["executable"], os.path.join(dest, name))
        names.append(name)
with open(os.path.join(dest, "list"), "w") as listing:
    listing.write("".join(name + "\n" for name in sorted(names)))
