import sys

from agent.sim.cli import main

sys.exit(main())
