"""Language models as activation producers: loading them and reading or replacing hooks."""
