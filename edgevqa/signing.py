"""Who made a bundle: an optional Ed25519 signature over its manifest.

The manifest lists the sha256 of every file in the bundle, so its hashes prove the files are the
ones the manifest names (integrity): a truncated copy or a changed graph is refused. They do not
prove who wrote the manifest (origin): anyone who can write a bundle can write a matching
manifest. Where that matters, the exporting site signs the manifest with its private key and the
workstation holds the public key:

    edgevqa keygen keys/                      # keys/edgevqa-signing.key (private, 0600) + .pub
    edgevqa sign bundle --key keys/edgevqa-signing.key        # writes bundle/manifest.sig
    EDGEVQA_TRUSTED_KEYS=/etc/edgevqa/trusted edgevqa ask ... # refuses bundles not signed by one

``EDGEVQA_TRUSTED_KEYS`` names a public key file or a folder of ``*.pub`` files. When it is set,
every bundle loaded for answering must carry a ``manifest.sig`` that one of them verifies;
when it is not set, signatures are not required (and not checked). Needs the ``sign`` extra
(``cryptography``); nothing else of edgevqa does.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path
from typing import Any

from edgevqa.errors import BundleError, InputError, MissingDependencyError

SIGNATURE = "manifest.sig"
KEY = "edgevqa-signing.key"
PUBLIC = "edgevqa-signing.pub"
TRUSTED_KEYS_ENV = "EDGEVQA_TRUSTED_KEYS"


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise MissingDependencyError(
            "bundle signatures need cryptography: pip install 'edgevqa[sign]'"
        ) from None
    return serialization, ed25519


def key_id(public_key: Any) -> str:
    """A short name for a public key: the first 16 hex digits of the sha256 of its raw bytes."""
    serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def new_keys(out: Path) -> tuple[Path, Path]:
    """Write a new key pair into ``out``: the private key readable by its owner only."""
    from edgevqa import atomic

    serialization, ed25519 = _crypto()
    out.mkdir(parents=True, exist_ok=True)
    private, public = out / KEY, out / PUBLIC
    if private.exists() or public.exists():
        raise InputError(f"{out} already holds a signing key; choose another folder")
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    atomic.write_bytes(public, pub)
    return private, public


def _load(path: Path, private: bool) -> Any:
    serialization, ed25519 = _crypto()
    try:
        data = path.read_bytes()
        key = (
            serialization.load_pem_private_key(data, password=None)
            if private
            else serialization.load_pem_public_key(data)
        )
    except OSError as e:
        raise InputError(f"cannot read the key {path} ({e.strerror or e})") from None
    except (ValueError, TypeError):
        raise InputError(f"{path} is not a PEM {'private' if private else 'public'} key") from None
    wanted = ed25519.Ed25519PrivateKey if private else ed25519.Ed25519PublicKey
    if not isinstance(key, wanted):
        raise InputError(f"{path} is not an Ed25519 key (make one with `edgevqa keygen DIR`)")
    return key


def sign(bundle: Path, key_path: Path) -> str:
    """Sign ``bundle``'s manifest with the private key at ``key_path``; returns the key id.

    The bundle is verified first (every file against the manifest): a signature vouches for
    exactly the files the manifest lists.
    """
    from edgevqa import atomic
    from edgevqa.bundle import MANIFEST, load_manifest, verify_files

    verify_files(bundle, load_manifest(bundle, verify=False), origin=False)  # all hashes
    key = _load(key_path, private=True)
    signature = key.sign((bundle / MANIFEST).read_bytes())
    kid = key_id(key.public_key())
    record = {"algorithm": "ed25519", "key_id": kid, "signature": base64.b64encode(signature).decode()}
    atomic.write_bytes(bundle / SIGNATURE, (json.dumps(record, indent=2) + "\n").encode())
    return kid


def trusted_keys(where: str | None = None) -> list[Any]:
    """The public keys of ``where`` (a .pub file or a folder of them), default the environment's
    ``EDGEVQA_TRUSTED_KEYS``; an empty list when none is configured."""
    where = where if where is not None else os.environ.get(TRUSTED_KEYS_ENV, "")
    if not where:
        return []
    path = Path(where).expanduser()
    files = sorted(path.glob("*.pub")) if path.is_dir() else [path]
    if not files or not all(f.is_file() for f in files):
        raise InputError(f"{TRUSTED_KEYS_ENV}={where}: no public key there (a .pub file or a folder of them)")
    return [_load(f, private=False) for f in files]


def check(bundle: Path, keys: list[Any]) -> str | None:
    """Verify ``bundle``'s manifest signature against ``keys``; returns the signer's key id
    (None when no keys are configured: then nothing is required).

    Raises:
        BundleError: no signature, a malformed one, or none of ``keys`` verifies it.
    """
    from edgevqa.bundle import MANIFEST

    if not keys:
        return None
    path = bundle / SIGNATURE
    if not path.is_file():
        raise BundleError(
            f"{bundle} is not signed ({TRUSTED_KEYS_ENV} requires a signature by a trusted key)"
        )
    try:
        record = json.loads(path.read_text("utf-8"))
        signature = base64.b64decode(record["signature"], validate=True)
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise BundleError(f"{path} is not an edgevqa signature") from None
    from cryptography.exceptions import InvalidSignature

    manifest = (bundle / MANIFEST).read_bytes()
    for key in keys:
        try:
            key.verify(signature, manifest)
        except InvalidSignature:
            continue
        return key_id(key)
    raise BundleError(
        f"{bundle}: its manifest is not signed by a trusted key (changed since signing, or signed by "
        f"a key not in {TRUSTED_KEYS_ENV})"
    )
