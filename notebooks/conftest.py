"""nbval settings for the notebooks: stderr (warnings with kernel PIDs, font-cache notices) is not compared."""


def pytest_collectstart(collector):
    if collector.fspath and collector.fspath.ext == ".ipynb":
        collector.skip_compare += ("stderr",)
