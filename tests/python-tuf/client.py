"""python-tuf's ngclient, an independent TUF client, against a repository served over HTTP.

usage: client.py METADATA_URL TARGETS_URL ROOT_JSON WORKDIR NAME...

Refreshes (timestamp, snapshot, targets, and every newer root) and downloads each NAME.
The first run of a WORKDIR starts from ROOT_JSON (the root an image bakes); later runs
start from the root the earlier runs trusted, as an installed client would. Prints one
JSON object: the versions trusted, every target name listed, and per NAME the downloaded
file's path, length, sha256 and custom metadata. Exits 1 with python-tuf's error on stderr
when anything is refused.
"""

import hashlib
import json
import os
import sys

from tuf.ngclient import Updater


def main() -> None:
    metadata_url, targets_url, root_path, workdir, *names = sys.argv[1:]
    metadata_dir = os.path.join(workdir, "metadata")
    target_dir = os.path.join(workdir, "targets")
    os.makedirs(metadata_dir, exist_ok=True)
    os.makedirs(target_dir, exist_ok=True)
    bootstrap = None
    if not os.path.exists(os.path.join(metadata_dir, "root.json")):
        with open(root_path, "rb") as f:
            bootstrap = f.read()
    updater = Updater(
        metadata_dir=metadata_dir,
        metadata_base_url=metadata_url,
        target_dir=target_dir,
        target_base_url=targets_url,
        bootstrap=bootstrap,
    )
    updater.refresh()
    downloaded = {}
    for name in names:
        info = updater.get_targetinfo(name)
        if info is None:
            sys.exit(f"python-tuf: {name} is not listed")
        path = updater.download_target(info)
        with open(path, "rb") as f:
            data = f.read()
        downloaded[name] = {
            "path": path,
            "length": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "custom": info.custom,
        }
    # ngclient has no public listing of every target nor of the trusted versions: read
    # them from its trusted set (python-tuf 7.0.1).
    trusted = updater._trusted_set
    print(
        json.dumps(
            {
                "root_version": trusted.root.version,
                "timestamp_version": trusted.timestamp.version,
                "snapshot_version": trusted.snapshot.version,
                "targets_version": trusted.targets.version,
                "listed": sorted(trusted.targets.targets),
                "downloaded": downloaded,
            }
        )
    )


if __name__ == "__main__":
    main()
