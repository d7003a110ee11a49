from featurecache.cli import app

app(prog_name="featurecache")
