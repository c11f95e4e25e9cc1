"""`python -m linglo.cli ...` (and `torchrun --nproc_per_node N -m linglo.cli train ...`)."""
import sys

from linglo.cli.main import main

sys.exit(main())
