"""`edgevqa keygen`, `edgevqa sign`, `edgevqa verify`: a bundle's integrity and origin (signing.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edgevqa.cli.base import app


@app.command()
def keygen(
    out: Annotated[Path, typer.Argument(help="Folder for the key pair (the private key is made 0600).")],
) -> None:
    """Make an Ed25519 key pair for signing bundles; give workstations only the .pub file."""
    from edgevqa import signing

    private, public = signing.new_keys(out)
    typer.echo(f"private key {private} (keep it on the exporting machine)\npublic key {public}")


@app.command()
def sign(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder to sign (verified first).")],
    key: Annotated[Path, typer.Option(help="Private key from `edgevqa keygen`.")],
) -> None:
    """Sign a bundle's manifest (it lists every file's sha256), so workstations can check who made it."""
    from edgevqa import signing

    kid = signing.sign(bundle, key)
    typer.echo(f"signed {bundle} with key {kid}: {bundle / signing.SIGNATURE}")


@app.command()
def verify(
    bundle: Annotated[Path, typer.Argument(help="Bundle folder.")],
    key: Annotated[
        Path | None,
        typer.Option(
            help="Public key (or folder of .pub files) to require (default: $EDGEVQA_TRUSTED_KEYS)."
        ),
    ] = None,
) -> None:
    """Check every file of a bundle against its manifest, and its signature against trusted keys."""
    from edgevqa import signing
    from edgevqa.bundle import load_manifest, verify_files

    m = load_manifest(bundle, verify=False)
    verify_files(bundle, m, origin=False)
    keys = signing.trusted_keys(str(key) if key else None)
    signer = signing.check(bundle, keys)
    origin = (
        f"signed by trusted key {signer}"
        if signer
        else "signature present, not checked (no trusted keys given)"
        if (bundle / signing.SIGNATURE).is_file()
        else "not signed"
    )
    typer.echo(f"{bundle}: {len(m.files)} files match their sha256; {origin}")
