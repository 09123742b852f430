"""Profiles store (P0): creator profiles (handle unique per tenant) and typed links between profiles.

Links reference profiles through composite foreign keys (profile id, tenant_id), so even the database
refuses a link to another tenant's profile; a link to oneself is refused by a CHECK. Deleting a profile
deletes its links first, as separate captured changes (no ON DELETE CASCADE: a cascade would change rows
without change events).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, cast

# Each store module declares its tables from the same pieces (SQLAlchemy's, base.py's mixins, columns.py's
# helpers), so these import lists repeat by design: one store, one self-contained module.
from sqlalchemy import CheckConstraint, ForeignKeyConstraint, Index, String, Text, UniqueConstraint, or_, select
from sqlalchemy.orm import Mapped, mapped_column

from dualwrite.demo.app.base import Base, Stamped, StampedRow, TenantKeyed, TenantKeyedRow, core_tables
from dualwrite.demo.app.columns import ref_column, stamp_column, tenant_fk
from dualwrite.demo.app.common import (
    DIRECTIONS,
    UNSET,
    Direction,
    TenantStore,
    check_choice,
    check_id,
    check_limit,
    check_text,
    given,
    not_found,
)
from dualwrite.demo.app.errors import DuplicateError, ValidationError
from dualwrite.types import JSONType, OrderedString


class Profile(TenantKeyed, Stamped, Base):
    __tablename__ = "profiles"
    __table_args__ = (
        UniqueConstraint("tenant_id", "handle"),
        UniqueConstraint("id", "tenant_id"),  # target of the links' tenant-safe foreign keys
    )
    handle: Mapped[str] = mapped_column(OrderedString(64))
    display_name: Mapped[str | None] = mapped_column(String(200))
    bio: Mapped[str | None] = mapped_column(Text)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSONType, default=dict)


class ProfileLink(TenantKeyed, Base):
    __tablename__ = "profile_links"
    __table_args__ = (
        UniqueConstraint("tenant_id", "source_profile_id", "target_profile_id", "relation"),
        ForeignKeyConstraint(*tenant_fk("source_profile_id", "profiles")),
        ForeignKeyConstraint(*tenant_fk("target_profile_id", "profiles")),
        CheckConstraint("source_profile_id <> target_profile_id", name="no_self_link"),
        Index(None, "tenant_id", "target_profile_id"),
    )
    source_profile_id: Mapped[int] = ref_column()
    target_profile_id: Mapped[int] = ref_column()
    relation: Mapped[str] = mapped_column(OrderedString(64))
    created_at: Mapped[datetime] = stamp_column()


profiles, profile_links = core_tables(Profile, ProfileLink)


class ProfileRow(TenantKeyedRow, StampedRow):
    handle: str
    display_name: str | None
    bio: str | None
    attributes: dict[str, Any]


class ProfileLinkRow(TenantKeyedRow):
    source_profile_id: int
    target_profile_id: int
    relation: str
    created_at: datetime


ProfileList = list[ProfileRow]
LinkList = list[ProfileLinkRow]


def _handle(value: Any) -> str:
    handle = check_text(value, "profiles.handle", 64, empty=False)
    if handle != handle.strip():
        raise ValidationError(f"profiles.handle: {handle!r} has leading or trailing spaces")
    return handle


class ProfileStore(TenantStore):
    store = "profiles"

    def create(
        self,
        handle: str,
        *,
        display_name: str | None = None,
        bio: str | None = None,
        attributes: dict[str, Any] | None = None,
    ) -> ProfileRow:
        values = {
            "handle": _handle(handle),
            "display_name": display_name,
            "bio": bio,
            "attributes": {} if attributes is None else attributes,
        }
        with self.write() as tx:
            taken = tx.connection.execute(
                select(profiles.c.id).where(self.mine(profiles), profiles.c.handle == handle)
            ).first()
            if taken is not None:
                raise DuplicateError(f"profiles.handle: {handle!r} is already taken in this tenant")
            return cast(ProfileRow, self.insert(tx, profiles, values))

    def get(self, profile_id: int) -> ProfileRow | None:
        return cast(ProfileRow | None, self.get_row("get", profiles, profile_id))

    def by_handle(self, handle: str) -> ProfileRow | None:
        stmt = select(profiles).where(self.mine(profiles), profiles.c.handle == handle)
        return cast(ProfileRow | None, self.first("by_handle", stmt, handle=handle))

    def update(
        self,
        profile_id: int,
        *,
        handle: str = UNSET,
        display_name: str | None = UNSET,
        bio: str | None = UNSET,
        attributes: dict[str, Any] = UNSET,
    ) -> ProfileRow:
        """Change the fields given (None clears an optional one); NotFoundError if not this tenant's."""
        profile_id = check_id(profile_id, "profiles.id")
        values = given(handle=handle, display_name=display_name, bio=bio, attributes=attributes)
        if "handle" in values:
            values["handle"] = _handle(values["handle"])
        with self.write() as tx:
            row = self.update_by_id(tx, profiles, profile_id, values)
            if row is None:
                raise not_found(profiles, profile_id)
            return cast(ProfileRow, row)

    def delete(self, profile_id: int) -> bool:
        """Delete the profile and its links (both directions); False if it is not this tenant's."""
        profile_id = check_id(profile_id, "profiles.id")
        with self.write() as tx:
            self.delete_where(
                tx,
                profile_links,
                or_(profile_links.c.source_profile_id == profile_id, profile_links.c.target_profile_id == profile_id),
            )
            return bool(self.delete_where(tx, profiles, profiles.c.id == profile_id))

    def link(self, source_id: int, target_id: int, relation: str) -> ProfileLinkRow:
        """Link two of this tenant's profiles (idempotent: an existing link is returned unchanged)."""
        check_text(relation, "profile_links.relation", 64, empty=False)
        with self.write() as tx:
            self.owned(tx, profiles, source_id, "profile_links.source_profile_id")
            self.owned(tx, profiles, target_id, "profile_links.target_profile_id")
            if source_id == target_id:
                raise ValidationError(f"profile_links: profile {source_id} cannot link to itself")
            existing = (
                tx.connection.execute(
                    select(profile_links).where(
                        self.mine(profile_links),
                        profile_links.c.source_profile_id == source_id,
                        profile_links.c.target_profile_id == target_id,
                        profile_links.c.relation == relation,
                    )
                )
                .mappings()
                .first()
            )
            if existing is not None:
                return cast(ProfileLinkRow, dict(existing))
            values = {
                "source_profile_id": source_id,
                "target_profile_id": target_id,
                "relation": relation,
            }
            return cast(ProfileLinkRow, self.insert(tx, profile_links, values))

    def unlink(self, source_id: int, target_id: int, relation: str | None = None) -> int:
        """Remove the links source -> target (of one relation, or all); returns how many."""
        conds = [
            profile_links.c.source_profile_id == check_id(source_id, "profile_links.source_profile_id"),
            profile_links.c.target_profile_id == check_id(target_id, "profile_links.target_profile_id"),
        ]
        if relation is not None:
            conds.append(profile_links.c.relation == relation)
        with self.write() as tx:
            return len(self.delete_where(tx, profile_links, *conds))

    def links(self, profile_id: int, relation: str | None = None, direction: Direction = "out") -> LinkList:
        """The profile's profile_links, by (relation, id)."""
        stmt = select(profile_links).where(*self._link_conds(profile_id, relation, direction))
        stmt = stmt.order_by(profile_links.c.relation, profile_links.c.id)
        rows = self.rows("links", stmt, profile_id=profile_id, relation=relation, direction=direction)
        return cast(LinkList, rows)

    def linked(self, profile_id: int, relation: str | None = None, direction: Direction = "out") -> ProfileList:
        """The distinct profiles linked to/from this one, by handle."""
        other = {"out": profile_links.c.target_profile_id, "in": profile_links.c.source_profile_id}
        if direction == "both":
            ids = (
                select(profile_links.c.target_profile_id)
                .where(*self._link_conds(profile_id, relation, "out"))
                .union(select(profile_links.c.source_profile_id).where(*self._link_conds(profile_id, relation, "in")))
            )
        else:
            check_choice(direction, "direction", DIRECTIONS)
            ids = select(other[direction]).where(*self._link_conds(profile_id, relation, direction))
        stmt = select(profiles).where(self.mine(profiles), profiles.c.id.in_(ids)).order_by(profiles.c.handle)
        rows = self.rows("linked", stmt, profile_id=profile_id, relation=relation, direction=direction)
        return cast(ProfileList, rows)

    def _link_conds(self, profile_id: int, relation: str | None, direction: str) -> list[Any]:
        profile_id = check_id(profile_id, "profile_id")
        check_choice(direction, "direction", DIRECTIONS)
        mine = {
            "out": profile_links.c.source_profile_id == profile_id,
            "in": profile_links.c.target_profile_id == profile_id,
            "both": or_(
                profile_links.c.source_profile_id == profile_id, profile_links.c.target_profile_id == profile_id
            ),
        }[direction]
        conds = [self.mine(profile_links), mine]
        if relation is not None:
            conds.append(profile_links.c.relation == relation)
        return conds

    def list(self, limit: int = 100, *, after_handle: str | None = None) -> ProfileList:
        conds = [self.mine(profiles)]
        if after_handle is not None:
            conds.append(profiles.c.handle > check_text(after_handle, "after_handle"))
        stmt = select(profiles).where(*conds).order_by(profiles.c.handle).limit(check_limit(limit))
        return cast(ProfileList, self.rows("list", stmt, limit=limit))
