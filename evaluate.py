"""`jaxseg evaluate` from a checkout: see jaxseg/commands/evaluate.py for its flags and examples."""

from jaxseg.commands.evaluate import run

if __name__ == "__main__":
    run()
