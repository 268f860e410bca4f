import sys

from dino_model.cli.main import main

sys.exit(main())
