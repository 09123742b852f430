import sys

from dualwrite.cli.bench import main

sys.exit(main())
