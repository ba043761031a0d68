"""Keystore v3 files: create, import, list, unlock; devnet:N labels."""

from __future__ import annotations

from pathlib import Path

import pytest
from eth_account import Account

from allmende.chain.anvil import devnet_accounts
from allmende.chain.keys import KeystoreError, create_keystore, import_keystore, list_keystores, load_key

KEY = "0x" + "11" * 32


def test_create_list_and_unlock(tmp_path: Path) -> None:
    info = create_keystore(tmp_path, "pw")

    listed = list_keystores(tmp_path)

    assert [i.address.lower() for i in listed] == [info.address.lower()]
    assert Account.from_key(load_key(str(info.path), "pw")).address == info.address
    assert (info.path.stat().st_mode & 0o777) == 0o600


def test_import_round_trips(tmp_path: Path) -> None:
    info = import_keystore(tmp_path, KEY, "pw", name="mine")
    assert load_key(str(info.path), "pw") == bytes.fromhex("11" * 32)


@pytest.mark.parametrize(
    ("spec", "password", "message"),
    [("missing.json", "pw", "no keystore"), ("devnet:10", None, "devnet:N"), ("devnet:x", None, "devnet:N")],
    ids=["missing", "devnet-range", "devnet-bad"],
)
def test_bad_key_specs(spec: str, password: str | None, message: str) -> None:
    with pytest.raises(KeystoreError, match=message):
        load_key(spec, password)


def test_wrong_password_and_duplicate(tmp_path: Path) -> None:
    info = import_keystore(tmp_path, KEY, "pw")
    with pytest.raises(KeystoreError, match="wrong password"):
        load_key(str(info.path), "wrong")
    with pytest.raises(KeystoreError, match="encrypted"):
        load_key(str(info.path), None)
    with pytest.raises(KeystoreError, match="already exists"):
        import_keystore(tmp_path, KEY, "pw")
    with pytest.raises(KeystoreError, match="not a valid private key"):
        import_keystore(tmp_path, "0x12", "pw", name="bad")


def test_devnet_accounts_match_anvil() -> None:
    first = devnet_accounts(1)[0]
    assert first.address == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    assert load_key("devnet:0", None) == first.key
    assert "public" in first.label
