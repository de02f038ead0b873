"""The ``reparam`` subcommands, one module each (argument parsing and printing only); see
:mod:`reparam.app.cli` for the interface every module provides."""
