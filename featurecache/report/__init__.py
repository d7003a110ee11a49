"""``featurecache report``: trained heads beside published figures, from what is on disk.

- :mod:`~featurecache.report.collect`: the heads of pipeline files, runs or cache folders;
- :mod:`~featurecache.report.render`: the Markdown text;
- :mod:`~featurecache.report.write`: Markdown, self-contained HTML and JSON files.
"""
