"""The application's stores: one module per store (schema + a tenant-bound repository class).

`dualwrite.registry` lists every store's tables in priority order; nothing else repeats that list.
Importing this package imports no store module (base.py is imported by the core on its own).
"""
