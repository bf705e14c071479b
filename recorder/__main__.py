"""``python -m recorder``: the same command as the ``recorder`` console script."""

from recorder.cli import main

if __name__ == "__main__":
    main(prog_name="recorder")
