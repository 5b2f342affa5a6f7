import sys

from bridge_server.cli.main import main

sys.exit(main())
