"""HTML pages and SVG charts shared by the reports."""
