import sys

from dyno_compile.cli import main

sys.exit(main())
