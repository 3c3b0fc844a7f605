"""Reports: tables, claims and their statistics, plots, the Markdown/HTML document, compare."""
