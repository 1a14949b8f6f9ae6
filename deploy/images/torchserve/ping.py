"""The TorchServe image's HEALTHCHECK: exit 0 when GET /ping on the inference port answers 200 (Healthy).

TorchServe answers 500 while a model has fewer workers than it needs. With token authorization on (the image's
default) /ping takes the inference key, read from the key_file.json TorchServe wrote into its working
directory; with it off (``--disable-token-auth``, as the Kubernetes Deployment runs it) no file, no header.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from pathlib import Path

PING_URL = "http://127.0.0.1:8080/ping"
KEY_FILE = Path("key_file.json")


def main() -> int:
    headers = {}
    if KEY_FILE.exists():
        headers["Authorization"] = f"Bearer {json.loads(KEY_FILE.read_text())['inference']['key']}"
    request = urllib.request.Request(PING_URL, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=4) as answer:  # noqa: S310 - a fixed http URL
            return 0 if answer.status == 200 else 1
    except (OSError, urllib.error.URLError):
        return 1


if __name__ == "__main__":
    sys.exit(main())
