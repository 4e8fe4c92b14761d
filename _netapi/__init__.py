"""salt-api modules of the deploy extension (``deploy_console``)."""
