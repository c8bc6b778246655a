import sys

from daamflow.cli import main

sys.exit(main())
