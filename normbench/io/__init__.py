"""Results on disk: the row schema, reading and writing rows, provenance, benchmark JSON, swept keys."""
