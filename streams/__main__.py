"""`python -m streams worker [faust options]`: run a stream worker with the settings from the environment."""

from streams.app import create_app

if __name__ == "__main__":
    create_app().main()
