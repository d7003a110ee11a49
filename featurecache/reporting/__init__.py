"""``featurecache report``: trained heads beside published figures, from what is on disk.

- :mod:`~featurecache.reporting.collect`: the heads of pipeline files, runs or cache folders;
- :mod:`~featurecache.reporting.render`: the Markdown text;
- :mod:`~featurecache.reporting.write`: Markdown, self-contained HTML and JSON files.
"""
