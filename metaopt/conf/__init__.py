"""The Hydra configs of the runner, a package so that an installed `metaopt` command finds them (pkg://metaopt.conf)."""
