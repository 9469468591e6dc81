"""The streaming stages of every pipeline: a reader thread and a writer thread with
bounded queues, the tar parser, compression, hashing."""
