import sys

from radfield.cli import main

sys.exit(main())
