"""`python -m plexus.serving --model NAME@ALIAS`: the retrieval service (see `server.py`)."""

import sys

from plexus.serving.server import main

if __name__ == "__main__":
    sys.exit(main())
