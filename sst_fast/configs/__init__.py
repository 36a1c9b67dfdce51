"""Packaged run configurations (``sst-fast train --config NAME``): one YAML file per setting."""
