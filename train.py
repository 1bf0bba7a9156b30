"""`jaxseg train` from a checkout: see jaxseg/commands/train.py for its flags and examples."""

from jaxseg.commands.train import run

if __name__ == "__main__":
    run()
