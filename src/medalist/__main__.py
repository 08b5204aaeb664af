import sys

from medalist.cli import main

sys.exit(main())
