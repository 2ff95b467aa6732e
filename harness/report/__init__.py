"""Reports of a run: the results, Markdown, HTML and code coverage."""
