"""What setup.cfg cannot say: the repository's top-level plugins/ and sql/ ship inside the package,
as coderund/data/plugins and coderund/data/sql (mapped, not copied), so an installed wheel runs every
command. A checkout and an editable install read them where they are (config.shipped)."""
from setuptools import find_packages, setup

DATA = {"coderund.data.plugins": "plugins", "coderund.data.sql": "sql"}

setup(packages=find_packages(include=["coderund*"]) + list(DATA), package_dir=DATA)
