"""Keys in keystore v3 files (eth-account), never in plain text.

The password comes from the ALLMENDE_PASSWORD environment variable (read by the
CLI's config loader) or a prompt. On a devnet, `devnet:N` names anvil's well-known
account N instead of a file; those keys are public and only ever hold devnet funds.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from eth_account import Account

from allmende.core.errors import InvalidInput

DEVNET_PREFIX = "devnet:"


class KeystoreError(InvalidInput):
    """A keystore file that is missing, malformed or locked with another password."""

    code = "bad_key"


@dataclass(frozen=True)
class KeyInfo:
    address: str
    path: Path


def create_keystore(directory: Path, password: str, name: str | None = None) -> KeyInfo:
    """Create a new random key, encrypted with `password`, in `directory`."""
    account = Account.create()
    return _write(directory, account.key, password, name or account.address)


def import_keystore(directory: Path, private_key_hex: str, password: str, name: str | None = None) -> KeyInfo:
    """Encrypt an existing private key into a keystore file."""
    try:
        account = Account.from_key(private_key_hex)
    except (ValueError, TypeError) as exc:
        raise KeystoreError(f"not a valid private key: {exc}") from None
    return _write(directory, account.key, password, name or account.address)


def _write(directory: Path, key: bytes, password: str, name: str) -> KeyInfo:
    directory.mkdir(parents=True, exist_ok=True)
    encrypted = Account.encrypt(key, password)
    path = directory / f"{name}.json"
    if path.exists():
        raise KeystoreError(f"{path} already exists")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(encrypted, handle)
    return KeyInfo(Account.from_key(key).address, path)


def list_keystores(directory: Path) -> list[KeyInfo]:
    """Every keystore file in `directory` with its address (no password needed)."""
    found = []
    for path in sorted(directory.glob("*.json")):
        try:
            address = json.loads(path.read_text())["address"]
        except (ValueError, KeyError):
            continue
        found.append(KeyInfo("0x" + address.removeprefix("0x"), path))
    return found


def load_key(spec: str, password: str | None) -> bytes:
    """Private key from a keystore path, or `devnet:N` for anvil's account N."""
    if spec.startswith(DEVNET_PREFIX):
        from allmende.chain.anvil import devnet_accounts

        try:
            index = int(spec[len(DEVNET_PREFIX) :])
        except ValueError:
            raise KeystoreError(f"{spec}: expected devnet:N with N in 0..9") from None
        if not 0 <= index <= 9:
            raise KeystoreError(f"{spec}: expected devnet:N with N in 0..9")
        return devnet_accounts(index + 1)[index].key
    path = Path(spec)
    if not path.is_file():
        raise KeystoreError(f"no keystore file at {path} (create one with `allmende keys create`, or use devnet:N)")
    if password is None:
        raise KeystoreError(f"{path} is encrypted: set ALLMENDE_PASSWORD or enter the password")
    try:
        keystore = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise KeystoreError(f"{path} is not a keystore file: {exc}") from None
    try:
        return bytes(Account.decrypt(keystore, password))
    except ValueError as exc:
        if "MAC mismatch" in str(exc):
            raise KeystoreError(f"wrong password for {path}") from None
        raise KeystoreError(f"cannot unlock {path}: {exc}") from None
