"""`python -m sockstat` runs the command line."""

from sockstat.cli import main

if __name__ == "__main__":
    main()
