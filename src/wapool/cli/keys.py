"""``wapool keys init|status|rotate|reencrypt``: the master key and encryption at rest."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from wapool.cli.database import open_database
from wapool.crypto import keyring, rotation
from wapool.crypto.usage import judge, usage
from wapool.errors import ConfigError, WapoolError
from wapool.settings import Settings


def register(commands: Any) -> None:
    parser = commands.add_parser("keys", help="master key and encryption at rest")
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")

    init = actions.add_parser("init", help="create a master key file (0600)")
    init.add_argument("--file", type=Path, help="default: WAPOOL_MASTER_KEY_FILE")
    init.set_defaults(handler=_init)

    status = actions.add_parser("status", help="which master keys wrap which data keys")
    status.set_defaults(handler=_status)

    rotate = actions.add_parser(
        "rotate", help="new master key; re-wraps every data key (no row rewritten)"
    )
    rotate.add_argument(
        "--file", type=Path, help="keyring file to write (default: WAPOOL_MASTER_KEY_FILE)"
    )
    rotate.add_argument(
        "--rewrap-only",
        action="store_true",
        help="no new key: re-wrap data keys still wrapped by an older key (resume a rotation)",
    )
    rotate.set_defaults(handler=_rotate)

    retire = actions.add_parser("retire", help="drop an old master key nothing uses any more")
    retire.add_argument("key_id", metavar="KEY_ID")
    retire.add_argument("--file", type=Path, help="default: WAPOOL_MASTER_KEY_FILE")
    retire.set_defaults(handler=_retire)

    reencrypt = actions.add_parser(
        "reencrypt",
        help="seal plaintext rows and messages (online, bounded batches, resumable)",
    )
    reencrypt.add_argument("--company", help="only this company")
    reencrypt.add_argument("--batch", type=int, default=1000, help="rows per transaction")
    reencrypt.add_argument("--pause", type=float, default=0.05, help="seconds between transactions")
    reencrypt.set_defaults(handler=_reencrypt)


def _target(settings: Settings, given: Path | None) -> Path:
    path = given or settings.master_key_file
    if path is None:
        raise WapoolError("name the key file: --file PATH or WAPOOL_MASTER_KEY_FILE")
    return path


def seal_hint(path: Path) -> str:
    return (
        "to seal it with systemd (TPM or host key) and keep no plain copy:\n"
        f"  systemd-creds encrypt --name={keyring.CREDENTIAL} {path} "
        f"/etc/credstore.encrypted/{keyring.CREDENTIAL} && shred -u {path}\n"
        f"then in the unit: LoadCredentialEncrypted={keyring.CREDENTIAL} "
        "(see docs/encryption.md)"
    )


async def _init(settings: Settings, args: argparse.Namespace) -> int:
    path = _target(settings, args.file)
    if path.exists():
        raise WapoolError(f"{path} exists: refusing to replace a master key")
    key = keyring.new_key()
    keyring.write(path, [key])
    print(f"master key {key.key_id} written to {path} (mode 0600)")
    print(seal_hint(path))
    return 0


async def _status(settings: Settings, args: argparse.Namespace) -> int:
    try:
        ring = keyring.load(settings.master_key_file)
    except ConfigError as exc:
        ring = None
        print(f"master key: unusable: {exc}")
    async with open_database(settings) as db:
        found = await usage(db)
    if ring is not None:
        print(f"master key source: {ring.source}")
        for i, key in enumerate(ring.keys):
            uses = found.wrapped_by.get(key.key_id, 0)
            role = "current" if i == 0 else ("old, unused: can be retired" if not uses else "old")
            print(f"  {key.key_id}  {role}; wraps {uses} companies' data keys")
    for master_key_id, n in sorted(found.wrapped_by.items()):
        if ring is None or ring.get(master_key_id) is None:
            print(f"  {master_key_id}  NOT CONFIGURED; wraps {n} companies' data keys")
    print(f"rows: {found.sealed_rows} encrypted, {found.plaintext_rows} plaintext")
    print(f"messages: {found.sealed_messages} encrypted, {found.plaintext_messages} plaintext")
    try:
        print(f"state: {judge(ring, found, settings)}")
    except ConfigError as exc:
        print(f"state: refused: {exc}")
        return 1
    if ring is not None and (found.plaintext_rows or found.plaintext_messages):
        print("plaintext rows remain: run `wapool keys reencrypt`")
    return 0


async def _rotate(settings: Settings, args: argparse.Namespace) -> int:
    ring = keyring.load(settings.master_key_file)
    if ring is None:
        raise WapoolError("no master key configured: `wapool keys init` first")
    if not args.rewrap_only:
        path = _target(settings, args.file)
        new = keyring.new_key()
        keyring.write(path, [new, *ring.keys])  # written first: the new key is never lost
        ring = keyring.Keyring((new, *ring.keys), str(path))
        print(f"new master key {new.key_id} written to {path}, before the old ones")
    async with open_database(settings) as db:
        done = await rotation.rewrap(db, ring)
    print(f"{done} data keys re-wrapped with master key {ring.current.key_id}")
    print("running daemons reading this key file pick it up within "
          "WAPOOL_MASTER_KEY_CHECK_SECONDS (other hosts: copy the file there; a systemd "
          "credential: seal it again and restart); retire old keys once `wapool keys status` "
          "shows them unused")  # fmt: skip
    if not args.rewrap_only and args.file is not None:
        print(seal_hint(args.file))
    return 0


async def _retire(settings: Settings, args: argparse.Namespace) -> int:
    path = _target(settings, args.file)
    ring = keyring.load_file(path, str(path))
    key = ring.get(args.key_id)
    if key is None:
        raise WapoolError(f"{path} has no master key {args.key_id}")
    if key == ring.current:
        raise WapoolError(f"{args.key_id} is the current master key: rotate first")
    async with open_database(settings) as db:
        found = await usage(db, count_rows=False)
    if uses := found.wrapped_by.get(key.key_id):
        raise WapoolError(f"master key {key.key_id} still wraps {uses} companies' data keys")
    keyring.write(path, [k for k in ring.keys if k != key])
    print(f"master key {key.key_id} removed from {path}")
    return 0


async def _reencrypt(settings: Settings, args: argparse.Namespace) -> int:
    if args.batch < 1 or args.pause < 0:
        raise WapoolError("--batch must be at least 1 and --pause not negative")
    async with open_database(settings) as db:
        if db.cipher.keyring is None:
            raise WapoolError("no master key configured: nothing to encrypt with")
        companies = [args.company] if args.company else await rotation.companies_with_rows(db)
        for company_id in companies:
            done = await rotation.reencrypt(db, company_id, batch=args.batch, pause=args.pause)
            print(f"{company_id}: {done.rewritten} rows encrypted, {done.skipped} left to the "
                  "mirror (changed meanwhile)")  # fmt: skip
    return 0
