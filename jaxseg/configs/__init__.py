"""The shipped configs, `get_config()` files named on the command line as
`--config configs/NAME.py[:ARGUMENT]`; installed with the package, so `jaxseg train --config
configs/unet.py` finds them from any directory (`jaxseg.config.load_config_file`)."""
