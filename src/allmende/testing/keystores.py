"""Keystore v3 files for tests whose subject is not the key file itself.

The CLI unlocks any keystore v3 file with the KDF parameters written in it. `allmende keys`
(`allmende.chain.keys`) writes eth-account's default, scrypt with n = 2^18: about 0.55 s of
CPU to write a file and again every time a command unlocks it, which a test that deploys,
transfers or stakes with a keystore paid a few times over. These files are the same format,
unlocked by the same code, with n = 2^12 (about 0.01 s). tests/chain/test_keys.py keeps
testing the files `allmende keys` writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from eth_account import Account

LIGHT_SCRYPT_N = 2**12


def keystore_file(directory: Path, key: bytes | str, password: str) -> Path:
    """`key` encrypted with `password` into `directory` (named by its address, readable by its
    owner only, as `allmende keys import` leaves it); its path."""
    account = Account.from_key(key)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{account.address}.json"
    encrypted = Account.encrypt(account.key, password, kdf="scrypt", iterations=LIGHT_SCRYPT_N)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(encrypted, handle)
    return path
