"""Writes a TUF repository with python-tuf's tuf.api.metadata, as an independent publisher.

usage: writer.py OUTDIR SPEC_JSON

SPEC_JSON: {"targets": [{"name": "000000000001.delta", "path": FILE, "custom": {...}}]}.
Writes, with consistent snapshots and one Ed25519 key per role:
  OUTDIR/metadata/1.root.json, 1.targets.json, 1.snapshot.json, timestamp.json
  OUTDIR/targets/<sha256>.<name>          (the hash prefix python-tuf and tough agree on
                                           for flat names)
  OUTDIR/keys/<role>.der                  (PKCS#8 DER, mode 0600, for deltacache to sign with)
Prints one JSON object: each role's key id, the spec_version written and the expiry.
"""

import hashlib
import json
import os
import sys
from datetime import datetime, timedelta, timezone

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import MetaFile, Metadata, Root, Snapshot, TargetFile, Targets, Timestamp
from tuf.api.serialization.json import JSONSerializer

ROLES = ["root", "targets", "snapshot", "timestamp"]


def main() -> None:
    out, spec_path = sys.argv[1:3]
    with open(spec_path) as f:
        spec = json.load(f)
    for sub in ["metadata", "targets", "keys"]:
        os.makedirs(os.path.join(out, sub), exist_ok=True)

    signers = {}
    for role in ROLES:
        private = Ed25519PrivateKey.generate()
        der = private.private_bytes(Encoding.DER, PrivateFormat.PKCS8, NoEncryption())
        fd = os.open(os.path.join(out, "keys", f"{role}.der"), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, der)
        os.close(fd)
        # CryptoSigner's key id is the standard one (sha256 of the canonical key JSON);
        # tough refuses a root whose key ids are anything else.
        signers[role] = CryptoSigner(private)

    # python-tuf serialises expiries as %Y-%m-%dT%H:%M:%SZ: whole seconds.
    expires = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(days=7)
    root = Metadata(Root(expires=expires, consistent_snapshot=True))
    for role, signer in signers.items():
        root.signed.add_key(signer.public_key, role)

    targets = Metadata(Targets(expires=expires))
    for target in spec["targets"]:
        with open(target["path"], "rb") as f:
            data = f.read()
        # sha256 only: tough requires it, and python-tuf names the file by the first hash.
        info = TargetFile.from_data(target["name"], data, ["sha256"])
        info.unrecognized_fields["custom"] = target["custom"]
        targets.signed.targets[target["name"]] = info
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(out, "targets", f"{digest}.{target['name']}"), "wb") as f:
            f.write(data)

    serializer = JSONSerializer(compact=False)

    def write(metadata: Metadata, role: str, file_name: str) -> bytes:
        metadata.sign(signers[role])
        data = metadata.to_bytes(serializer)
        with open(os.path.join(out, "metadata", file_name), "wb") as f:
            f.write(data)
        return data

    def meta(data: bytes) -> MetaFile:
        return MetaFile(version=1, length=len(data), hashes={"sha256": hashlib.sha256(data).hexdigest()})

    write(root, "root", "1.root.json")
    snapshot = Metadata(Snapshot(expires=expires))
    snapshot.signed.meta["targets.json"] = meta(write(targets, "targets", "1.targets.json"))
    timestamp = Metadata(Timestamp(expires=expires))
    timestamp.signed.snapshot_meta = meta(write(snapshot, "snapshot", "1.snapshot.json"))
    write(timestamp, "timestamp", "timestamp.json")
    print(
        json.dumps(
            {
                "keyids": {role: signer.public_key.keyid for role, signer in signers.items()},
                "spec_version": root.signed.spec_version,
                "expires": root.signed.expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )
    )


if __name__ == "__main__":
    main()
