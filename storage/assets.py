"""The asset registry (table ``assets``): an asset's id is its symbol, and its
decimals never change once registered.

``Assets`` keeps a cache of the registry for the ingest checks; it is
refreshed on a miss, so an asset registered by another process is found, and
an asset deleted behind the store's back is caught by the foreign keys.
"""

from __future__ import annotations

from sqlalchemy import select

from storage.checks import check_asset, check_decimals
from storage.db import Database
from storage.errors import ConstraintError, UnknownAssetError
from storage.rows import AssetRow
from storage.schema import Asset

__all__ = ["Assets"]


class Assets:
    """Registered assets, and the check that an update names one."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.known: dict[str, int] | None = None  # id -> decimals, None until first read

    def ensure(self, asset: str, decimals: int) -> None:
        """Register ``asset`` (its id is its symbol); an existing one must keep
        its decimals.

        Raises:
            InvalidIdentifierError: a malformed id, or decimals outside 0..36.
            ConstraintError: the asset exists with other decimals.
        """
        check_asset(asset)
        check_decimals(decimals, asset)
        with self.db.transaction(write=True) as conn:
            current = conn.scalar(select(Asset.decimals).where(Asset.id == asset))
            if current is None:
                conn.execute(self.db.insert(Asset).values(id=asset, decimals=decimals))
            elif current != decimals:
                raise ConstraintError(f"asset {asset} has {current} decimals, not {decimals}")
        self.known = None

    def all(self) -> list[AssetRow]:
        """Every registered asset, by id."""
        with self.db.transaction() as conn:
            rows = conn.execute(select(Asset.id, Asset.decimals).order_by(Asset.id)).all()
        return [AssetRow(r.id, r.decimals) for r in rows]

    def check_known(self, asset: str, where: str) -> None:
        """Raise UnknownAssetError unless ``asset`` is registered (``where``
        names the argument in the message)."""
        if self.known is None or asset not in self.known:
            self.known = {a.id: a.decimals for a in self.all()}  # refresh on a miss
            if asset not in self.known:
                raise UnknownAssetError(f"{where}: unknown asset {asset!r}")
