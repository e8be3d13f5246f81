#!/usr/bin/env python3
"""Creates a blob container on Azurite (the Azure Blob emulator) with the
emulator's well-known account, signing the request with Shared Key.
Usage: azurite-container.py http://127.0.0.1:PORT NAME. Exists already: ok."""
import base64, hashlib, hmac, sys, urllib.error, urllib.request
from email.utils import formatdate

ACCOUNT = "devstoreaccount1"
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
VERSION = "2021-08-06"

def main(endpoint: str, container: str) -> None:
    date = formatdate(usegmt=True)
    to_sign = "\n".join(
        # Content-Encoding, -Language, -Length (empty for 0), -MD5, -Type, Date, If-*, Range
        ["PUT", "", "", "", "", "application/octet-stream"] + [""] * 6
        + [f"x-ms-date:{date}", f"x-ms-version:{VERSION}",
           f"/{ACCOUNT}/{ACCOUNT}/{container}\nrestype:container"]
    )
    sig = base64.b64encode(
        hmac.new(base64.b64decode(KEY), to_sign.encode(), hashlib.sha256).digest()
    ).decode()
    req = urllib.request.Request(
        f"{endpoint}/{ACCOUNT}/{container}?restype=container", method="PUT", data=b"",
        headers={"Content-Type": "application/octet-stream", "x-ms-date": date, "x-ms-version": VERSION,
                 "Authorization": f"SharedKey {ACCOUNT}:{sig}"},
    )
    try:
        urllib.request.urlopen(req, timeout=10)
    except urllib.error.HTTPError as e:
        if e.code != 409:
            sys.exit(f"creating container {container}: HTTP {e.code}: {e.read()[:500]!r}")

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
