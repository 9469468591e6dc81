"""How volbak reads and writes a volume's tree: through the engine's archive API or
directly on the host.

- ``direct``: a tar source and a tar target that work on the volume's directory (its
  ``Mountpoint``) on the engine's own host, keeping every attribute.
- ``select``: which of the two a run uses, and why.
- ``tarfmt``: the PAX/ustar records both directions share.
"""
