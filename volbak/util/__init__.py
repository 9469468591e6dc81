"""Small process-level helpers: signal deferral, progress bars."""
