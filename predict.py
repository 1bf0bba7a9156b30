"""`jaxseg predict` from a checkout: see jaxseg/commands/predict.py for its flags and examples."""

from jaxseg.commands.predict import run

if __name__ == "__main__":
    run()
