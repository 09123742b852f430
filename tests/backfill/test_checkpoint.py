"""Checkpoints: an older table is migrated in place; saves keep started_at, a moving rate and the versions."""

from __future__ import annotations

