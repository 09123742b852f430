"""The end-to-end demo (`dualwrite demo`): it drives the core, the backfill and the shadow packages."""
