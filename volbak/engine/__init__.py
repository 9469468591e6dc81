"""Everything that talks to the Docker engine: connecting, helper containers, volumes,
and the archive API. The only module that uses docker-py (and its internals)."""
