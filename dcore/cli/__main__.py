import sys

from dcore.cli import main

sys.exit(main())
