"""Compliance workflows above the archive: backups that are evidence too (:mod:`.backup`)."""
