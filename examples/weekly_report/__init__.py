"""The weekly farm report pipeline: a template to copy (see README.md beside this file)."""
