"""An application's models before and after one migration, for tests/core/test_alembic.py: v2 adds a
column with a CHECK to `al_notes` (a table another references with ON DELETE CASCADE; on SQLite the CHECK
needs batch mode's table copy) and a new table `al_tags`."""

from __future__ import annotations

from sqlalchemy import CheckConstraint, Column, ForeignKey, Integer, MetaData, String, Table, Text

from dualwrite import Tables


def _models(with_rating: bool) -> MetaData:
    md = MetaData()
    notes_cols: list = [  # type: ignore[type-arg]
        Column("id", Integer, primary_key=True, autoincrement=False),
        Column("body", Text, nullable=False),
    ]
    if with_rating:
        notes_cols += [
            Column("rating", Integer, nullable=True),
            CheckConstraint("rating between 0 and 5", name="al_rating"),
        ]
    Table("al_notes", md, *notes_cols)
    Table(
        "al_links",
        md,
        Column("note_id", Integer, ForeignKey("al_notes.id", ondelete="CASCADE"), primary_key=True),
        Column("url", String(200), primary_key=True),
    )
    if with_rating:
        Table(
            "al_tags",
            md,
            Column("note_id", Integer, ForeignKey("al_notes.id", ondelete="CASCADE"), primary_key=True),
            Column("tag", String(40), primary_key=True),
        )
    return md


md1, md2 = _models(False), _models(True)
v1, v2 = Tables.of(md1, store="notes"), Tables.of(md2, store="notes")

REVISION = '''"""v2: al_notes.rating (with a CHECK), al_tags"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = None


def upgrade():
    with op.batch_alter_table("al_notes") as batch:
        batch.add_column(sa.Column("rating", sa.Integer, nullable=True))
        batch.create_check_constraint("al_rating", "rating between 0 and 5")
    op.create_table(
        "al_tags",
        sa.Column("note_id", sa.Integer, sa.ForeignKey("al_notes.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("tag", sa.String(40), primary_key=True),
    )


def downgrade():
    op.drop_table("al_tags")
    with op.batch_alter_table("al_notes") as batch:
        batch.drop_constraint("al_rating", type_="check")
        batch.drop_column("rating")
'''

ENV = """from alembic import context

from dualwrite import load_settings
from dualwrite.alembic import run_on_both
from tests.core.alembic_app import md2

run_on_both(context, load_settings(), md2)
"""
