"""Encryption: the age v1 format on `cryptography` primitives, and key/passphrase
loading for the CLI and job files."""
