"""The reparam application: the ``reparam`` command and what it writes (run folders, deploy
folders, scale files, reports, benchmarks), built on the library's public names only."""
