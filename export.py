"""`jaxseg export` from a checkout: see jaxseg/commands/export.py for its flags and examples."""

from jaxseg.commands.export import run

if __name__ == "__main__":
    run()
