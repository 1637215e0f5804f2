import sys

from recogfast.cli import main

sys.exit(main())
