"""The exit statuses of every ``solvency-verify`` command (the table of
``--help``, verifier/cli.py's ``EXIT_TABLE``)."""

__all__ = ["EXIT_ERROR", "EXIT_INVALID", "EXIT_NOT_SOLVENT", "EXIT_USAGE", "EXIT_VALID"]

EXIT_VALID = 0  # valid (for proof: and every asset of the record solvent)
EXIT_INVALID = 1  # invalid proof, or a violation by the custodian
EXIT_USAGE = 2  # malformed input or usage
EXIT_ERROR = 3  # operational error: network, files, a bug of ours
EXIT_NOT_SOLVENT = 4  # proof: included, but some asset insolvent or unproven
