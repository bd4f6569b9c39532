"""Core: what every stage and family shares (paths, files, errors, schema pieces, metrics, devices). Nothing here
imports a stage module or a family."""
